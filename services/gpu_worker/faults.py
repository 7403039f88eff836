"""Fault injection for the fault tests: off unless ``VISIONQ_FAULT_INJECTION=1``.

A test marks an image by putting ``VISIONQ-FAULT:<name>[=<value>]`` in its bytes (a JPEG
comment does it without breaking the image). The worker then misbehaves on purpose:

- ``kill``: the process dies (``os._exit``) while decoding it, mid-batch: a poison job.
- ``oom``: any forward pass containing it raises ``torch.cuda.OutOfMemoryError``.
- ``oom_batch``: a forward of more than one image containing it raises the same.
- ``slow=<s>``: the forward pass containing it sleeps ``s`` seconds first.

Decoded images carry the mark into the forward pass as a stamped first pixel.
"""

from __future__ import annotations

import logging
import os
import re
import time

import numpy as np
import torch

from services.gpu_worker.inference import ForwardFn
from services.gpu_worker.prepare import DecodeFn

logger = logging.getLogger(__name__)

_MARK = re.compile(rb"VISIONQ-FAULT:([a-z_]+)(?:=([0-9.]+))?")
# First-pixel stamps (R, G, B) that carry a fault from decode to forward; slow keeps its
# duration in tenths of a second in the blue channel.
_STAMPS = {"oom": (251, 7, 13), "oom_batch": (252, 7, 13), "slow": (253, 7)}


def fault_of(data: bytes) -> tuple[str, float] | None:
    """The fault named in an image's bytes, with its value (0 when none)."""
    match = _MARK.search(data)
    if match is None:
        return None
    return match.group(1).decode(), float(match.group(2) or 0)


def faulty_decoder(decode: DecodeFn) -> DecodeFn:
    """Decode as usual, but die on ``kill`` and stamp the other faults into the pixels."""

    def run(data: bytes) -> np.ndarray:
        fault = fault_of(data)
        if fault is not None and fault[0] == "kill":
            logger.error("fault injection: killing the worker (poison job)")
            os._exit(137)
        array: np.ndarray = decode(data)
        if fault is not None and fault[0] in _STAMPS:
            stamp = _STAMPS[fault[0]]
            if fault[0] == "slow":
                stamp = (*stamp, min(255, round(fault[1] * 10)))
            array[:, 0, 0] = stamp
        return array

    return run


def _faults_in(batch: np.ndarray) -> tuple[set[str], float]:
    pixels = np.asarray(
        batch[:, :, 0, 0].cpu() if isinstance(batch, torch.Tensor) else batch[:, :, 0, 0]
    )
    found: set[str] = set()
    slow = 0.0
    for r, g, b in pixels.tolist():
        for name, stamp in _STAMPS.items():
            if (r, g) == stamp[:2] and (name == "slow" or b == stamp[2]):
                found.add(name)
                if name == "slow":
                    slow = max(slow, b / 10)
    return found, slow


def faulty_forward(run: ForwardFn) -> ForwardFn:
    """Raise or stall as the stamped images in the batch ask, then run."""

    def forward(batch: np.ndarray) -> torch.Tensor:
        found, slow = _faults_in(batch)
        if slow:
            time.sleep(slow)
        if "oom" in found or ("oom_batch" in found and len(batch) > 1):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by a fault test)")
        return run(batch)

    return forward
