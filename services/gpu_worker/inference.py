"""One forward pass over a batch of handler items, and what to do when it fails.

Runs on the worker's inference thread only (the thread that loaded the model and set the
torch thread count). A failing forward is split in halves and retried on the item
indices, down to single items, so a bad item or a memory spike never fails its
batch-mates, whatever the task.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from models.handlers.tensors import Normalizer
from services.gpu_worker.cuda_errors import is_device_fault, is_oom

logger = logging.getLogger(__name__)

__all__ = [
    "DeviceFault",
    "ForwardError",
    "ForwardFn",
    "Normalizer",
    "bucket_sizes",
    "bucketed",
    "forward_split",
    "is_device_fault",
    "is_oom",
]


class ForwardError(Exception):
    """A forward pass of one single item failed; carries the error code to report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DeviceFault(RuntimeError):
    """A non-OOM CUDA error in a forward: the worker must exit (see ``cuda_errors``)."""


# items of one batch -> one output per item (collate + ONE predict + split)
ForwardFn = Callable[[list[Any]], list[Any]]


def bucket_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... and the maximum: the only batch sizes a bucketed model ever sees."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


def bucketed(run: ForwardFn, max_batch_size: int) -> ForwardFn:
    """Pad each batch with copies of its first item up to the next bucket; drop theirs after.

    A compiled model or a captured CUDA graph is specialised to input shapes; a handful of
    fixed sizes keeps recompilation away at the cost of some padded work.
    """
    sizes = bucket_sizes(max_batch_size)

    def run_padded(items: list[Any]) -> list[Any]:
        n = len(items)
        target = next((s for s in sizes if s >= n), n)
        if target == n:
            return run(items)
        return run([*items, *[items[0]] * (target - n)])[:n]

    return run_padded


def forward_split(
    run: ForwardFn,
    items: Sequence[Any],
    on_oom: Callable[[], None] = lambda: None,
) -> list[Any]:
    """One output per item; failures are split on indices until they touch one item only.

    A failed single item gets a ``ForwardError`` (``out_of_memory`` or ``inference_error``)
    in its place. A non-OOM CUDA error raises ``DeviceFault`` instead (see its docstring).

    The retry runs after the ``except`` block has ended: inside it, the exception's
    traceback still references the failed forward's frames and so its activations, and
    ``empty_cache()`` could return none of that memory to the device.
    """
    try:
        outputs = run(list(items))
        if len(outputs) != len(items):
            raise RuntimeError(f"handler split gave {len(outputs)} outputs for {len(items)} items")
        return outputs
    except Exception as exc:
        if is_device_fault(exc):
            raise DeviceFault(f"{type(exc).__name__}: {exc}"[:500]) from None
        oom = is_oom(exc)
        message = f"{type(exc).__name__}: {exc}"[:500]
        # `exc` (and with it the traceback and the failed forward's tensors) is dropped when
        # this block ends; nothing below may refer to it.
    if oom:
        on_oom()
        if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    if len(items) == 1:
        logger.warning("forward failed for a single item: %s", message)
        return [ForwardError("out_of_memory" if oom else "inference_error", message)]
    logger.warning("forward of %d items failed (%s); splitting", len(items), message)
    half = len(items) // 2
    return forward_split(run, items[:half], on_oom) + forward_split(run, items[half:], on_oom)
