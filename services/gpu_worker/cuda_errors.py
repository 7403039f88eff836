"""Which errors mean "this item" and which mean "this process's GPU": torch-free checks.

A CUDA out-of-memory error is about one batch: smaller batches may fit. Any other CUDA error
(an illegal address, a device-side assert, an ECC/Xid fault, a launch failure) is sticky: the
CUDA context of the process stays broken and every later kernel fails too, so failing items
one by one would turn a dead GPU into a stream of ``inference_error`` results from a worker
that looks healthy. Such a worker must exit so that kombu redelivers its jobs to a healthy
one (NVIDIA, "CUDA C++ Programming Guide", error checking: sticky errors; torch raises them
as ``torch.AcceleratorError`` since 2.8).

No torch import here: the decode threads' module (``prepare``) uses these too.
"""

from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger(__name__)

# Exit status of a worker that left because its GPU failed (the supervisor restarts it).
DEVICE_FAULT_EXIT = 71

# Messages of CUDA runtime / driver / library errors as c10's CUDA checks, cuBLAS, cuDNN and
# nvJPEG write them; OOM is ruled out before this is consulted.
_CUDA_FAULT = re.compile(
    r"CUDA error|CUDA driver error|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|cuFFT error|"
    r"CUSOLVER_STATUS|NCCL error|illegal memory access|illegal address|device-side assert|"
    r"unspecified launch failure|uncorrectable ECC|an illegal instruction|"
    r"misaligned address|launch timed out|GPU has fallen off the bus",
    re.IGNORECASE,
)


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def is_oom(exc: BaseException) -> bool:
    """True for CUDA OOM (``torch.OutOfMemoryError``) and the CPU allocator's equivalent."""
    if "OutOfMemoryError" in _type_names(exc):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def is_device_fault(exc: BaseException) -> bool:
    """True for a non-OOM CUDA error: the process's CUDA context can no longer be trusted.

    By type (``torch.AcceleratorError``) and, for libraries that raise a plain
    ``RuntimeError``, by message. A shape or dtype error of a bad input is not one.
    """
    if is_oom(exc):
        return False
    if "AcceleratorError" in _type_names(exc):
        return True
    return isinstance(exc, RuntimeError) and bool(_CUDA_FAULT.search(str(exc)))


def exit_on_device_fault(exc: BaseException, where: str) -> None:
    """End the process at once if ``exc`` is a sticky CUDA error (its jobs are redelivered).

    ``os._exit``: a clean shutdown would ack the messages this worker holds, and the
    CUDA context cannot run the remaining batches anyway.
    """
    if is_device_fault(exc):
        logger.critical("CUDA error in %s (%s); exiting so the jobs are redelivered", where, exc)
        logging.shutdown()
        os._exit(DEVICE_FAULT_EXIT)
