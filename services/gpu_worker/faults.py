"""Fault injection for the fault tests: off unless ``VISIONQ_FAULT_INJECTION=1``.

A test marks an image by putting ``VISIONQ-FAULT:<name>[=<value>][@<path>]`` in its bytes
(a JPEG comment does it without breaking the image). The worker then misbehaves on purpose:

- ``kill``: the process dies (``os._exit``) while decoding it, mid-batch: a poison job.
- ``oom``: any forward pass containing it raises ``torch.cuda.OutOfMemoryError``.
- ``oom_batch``: a forward of more than one item containing it raises the same.
- ``slow=<s>``: the forward pass containing it sleeps ``s`` seconds first; with ``@<path>``
  it stops sleeping as soon as that file exists, so a test that has seen what it waited
  for ends the stall then instead of after a duration padded for a slow machine.
- ``cuda_error``: any forward pass containing it raises a sticky CUDA error (as a
  device-side assert from an out-of-range index in the input would).

Works for every handler: a marked item travels from decode to forward wrapped in
``Marked``, which the forward unwraps before the handler's ``collate`` sees it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from services.gpu_worker.inference import ForwardFn

logger = logging.getLogger(__name__)

_MARK = re.compile(rb"VISIONQ-FAULT:([a-z_]+)(?:=([0-9.]+))?(?:@([A-Za-z0-9_./-]+))?")


@dataclass(frozen=True)
class Marked:
    """A decoded item that carries a fault into the forward pass."""

    item: Any
    fault: str
    value: float
    release: str | None = None  # a file whose existence ends a ``slow`` stall early


def fault_of(data: bytes) -> tuple[str, float, str | None] | None:
    """The fault named in an image's bytes, with its value (0 when none) and release file."""
    match = _MARK.search(data)
    if match is None:
        return None
    release = match.group(3).decode() if match.group(3) else None
    return match.group(1).decode(), float(match.group(2) or 0), release


def _stall(seconds: float, releases: list[str]) -> None:
    """Sleep ``seconds``, or less once one of the ``releases`` files exists."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if any(os.path.exists(path) for path in releases):
            return
        time.sleep(min(0.05, left))


def faulty_decoder(decode: Any) -> Any:
    """Decode as usual, but die on ``kill`` and mark the item with the other faults."""

    def run(data: bytes, params: Any) -> Any:
        fault = fault_of(data)
        if fault is not None and fault[0] == "kill":
            logger.error("fault injection: killing the worker (poison job)")
            os._exit(137)
        item = decode(data, params)
        if fault is not None:
            return Marked(item, *fault)
        return item

    return run


def faulty_forward(run: ForwardFn) -> ForwardFn:
    """Raise or stall as the marked items in the batch ask, then run the plain items."""

    def forward(items: list[Any]) -> list[Any]:
        marks = [i for i in items if isinstance(i, Marked)]
        found = {m.fault for m in marks}
        slow = max((m.value for m in marks if m.fault == "slow"), default=0.0)
        if slow:
            _stall(slow, [m.release for m in marks if m.fault == "slow" and m.release])
        if "cuda_error" in found:
            raise RuntimeError(
                "CUDA error: an illegal memory access was encountered (injected by a fault test)"
            )
        if "oom" in found or ("oom_batch" in found and len(items) > 1):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by a fault test)")
        return run([i.item if isinstance(i, Marked) else i for i in items])

    return forward
