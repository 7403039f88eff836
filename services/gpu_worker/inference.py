"""One forward pass over a batch of uint8 images, and what to do when it fails.

Runs on the worker's inference thread only (the thread that loaded the model and set the
torch thread count). A failing forward is split in halves and retried, down to single
images, so a bad item or a memory spike never fails its batch-mates.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.specs import Preprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopK:
    """Top-k of one image: class indices and softmax scores, best first."""

    indices: list[int]
    scores: list[float]


class ForwardError(Exception):
    """A forward pass of one single image failed; carries the error code to report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Normalizer:
    """uint8 NCHW batch -> normalised float batch on the device, in the model's layout."""

    def __init__(self, pre: Preprocess, device: torch.device, channels_last: bool) -> None:
        self.device = device
        self.channels_last = channels_last and device.type == "cuda"
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalise on the device: the host copy stays uint8 (4x fewer bytes to move)."""
        host = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
        if self.device.type == "cuda" and host.device.type == "cpu":
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True).float().div_(255.0)
        x = x.sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def is_oom(exc: BaseException) -> bool:
    """True for CUDA OOM and the CPU allocator's equivalent."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


ForwardFn = Callable[[np.ndarray], torch.Tensor]


def bucket_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... and the maximum: the only batch shapes a bucketed model ever sees."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


def bucketed(run: ForwardFn, max_batch_size: int) -> ForwardFn:
    """Pad each batch with blank images up to the next bucket, and drop their rows after.

    A compiled model or a captured CUDA graph is specialised to input shapes; a handful of
    fixed sizes keeps recompilation away at the cost of some padded work.
    """
    sizes = bucket_sizes(max_batch_size)

    def run_padded(batch: np.ndarray) -> torch.Tensor:
        n = len(batch)
        target = next((s for s in sizes if s >= n), n)
        if target == n:
            return run(batch)
        if isinstance(batch, torch.Tensor):
            pad = torch.zeros(
                (target - n, *batch.shape[1:]), dtype=batch.dtype, device=batch.device
            )
            return run(torch.cat([batch, pad]))[:n]
        padded = np.concatenate([batch, np.zeros((target - n, *batch.shape[1:]), batch.dtype)])
        return run(padded)[:n]

    return run_padded


def forward_topk(
    run: ForwardFn,
    batch: np.ndarray,
    k: int,
    on_oom: Callable[[], None] = lambda: None,
) -> list[TopK | ForwardError]:
    """Top-k per image of ``batch``; failures are split until they touch one image only."""
    try:
        logits = run(batch)
        probs = torch.softmax(logits.float(), dim=1)
        k = min(k, probs.shape[1])
        scores, indices = probs.topk(k, dim=1)
        scores_l = scores.cpu().tolist()
        indices_l = indices.cpu().tolist()
        if len(scores_l) != len(batch):
            raise RuntimeError(f"model returned {len(scores_l)} rows for {len(batch)} images")
        return [TopK(i, s) for i, s in zip(indices_l, scores_l, strict=True)]
    except Exception as exc:
        oom = is_oom(exc)
        if oom:
            on_oom()
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
        if len(batch) == 1:
            code = "out_of_memory" if oom else "inference_error"
            logger.warning("forward failed for a single image: %s", exc)
            return [ForwardError(code, f"{type(exc).__name__}: {exc}"[:500])]
        logger.warning("forward of %d images failed (%s); splitting", len(batch), exc)
        half = len(batch) // 2
        return forward_topk(run, batch[:half], k, on_oom) + forward_topk(
            run, batch[half:], k, on_oom
        )


def label_topk(top: TopK, labels: Sequence[str], k: int) -> list[dict[str, object]]:
    """The API's top_k list for one image, cut to the k that job asked for."""
    return [
        {"label": labels[i] if i < len(labels) else str(i), "index": i, "score": s}
        for i, s in zip(top.indices[:k], top.scores[:k], strict=True)
    ]
