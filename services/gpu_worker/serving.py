"""Everything one served model needs on the inference thread: its handler, wrapped.

Built once per model after loading, on the thread that runs the forward passes. The
runtime, not the handler, adds inference mode and autocast, batch buckets and (tests only)
fault injection around the handler's ``collate -> predict -> split``.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ValidationError

from models.handlers import Handler, HandlerOptions, make_handler
from models.specs import ModelSpec
from services.common.errors import ConfigError
from services.common.settings import WorkerSettings
from services.gpu_worker.device import autocast_kwargs
from services.gpu_worker.inference import ForwardFn, bucket_sizes, bucketed

logger = logging.getLogger(__name__)

DecodeFn = Callable[[bytes, Any], Any]


@dataclass
class Served:
    """A set-up handler with the runtime's decode and forward around it."""

    spec: ModelSpec
    handler: Handler
    decode: DecodeFn
    forward: ForwardFn

    @property
    def params_type(self) -> type[BaseModel]:
        """The handler's per-request options."""
        return self.handler.Params

    @property
    def task(self) -> str:
        """The handler's task (metrics label)."""
        return self.spec.task if self.spec.handler is None else self.handler.task


def handler_options(settings: WorkerSettings) -> HandlerOptions:
    """The worker settings a handler sees."""
    return HandlerOptions(
        max_image_pixels=settings.max_image_pixels,
        weights_dir=settings.weights_dir,
        allow_random_weights=settings.allow_random_weights,
        allow_download=settings.allow_download,
        channels_last=settings.channels_last,
        fold_batchnorm=settings.fold_batchnorm,
        compile=settings.compile,
        gpu_decode=settings.gpu_decode,
        background=settings.background_rgb,
        accepted_formats=tuple(settings.accepted_formats),
        fast_decode=settings.fast_decode,
        weights_dtype=settings.autocast_dtype,
    )


# What Tensor.view raises when the layout changed under it (channels_last inputs): eager
# torch's wording, and torch.compile's (Dynamo's fake-tensor pass) for the same call.
_LAYOUT_ERRORS = (
    "view size is not compatible with input tensor's size and stride",
    "Cannot view a tensor with shape",
)


def _warmup_image() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, format="PNG")
    return buf.getvalue()


def warmup_sizes(
    device_type: str, max_batch_size: int, buckets: bool, compiled: bool = False
) -> list[int]:
    """Batch sizes to run once before the worker reports ready.

    On CUDA every shape the live traffic can bring is run once at start-up: the first call
    of a shape pays cuDNN's algorithm search (``cudnn.benchmark``) and, compiled, a whole
    Inductor compile -- on live traffic, under the batch watchdog, that can kill the worker
    and brand its jobs as poison. With buckets those shapes are the buckets; without, every
    size up to the maximum. On the CPU one small batch finds handler bugs early; nothing
    is tuned per shape there, unless the model is compiled (``compiled``): Inductor
    specialises to each shape on the CPU too (5 buckets of mobilenet_v3_small took 27 s to
    warm here), so the buckets are warmed there as well.
    """
    if device_type != "cuda" and not compiled:
        return [1]
    return bucket_sizes(max_batch_size) if buckets else list(range(1, max_batch_size + 1))


def wrap_handler(
    handler: Handler, spec: ModelSpec, settings: WorkerSettings, device: torch.device
) -> Served:
    """Wire autocast, buckets and fault injection around a set-up handler, and warm it up."""
    ac = autocast_kwargs(device.type, settings.autocast_dtype)
    if device.type == "cuda":
        # Shapes repeat (buckets, or at most max_batch_size sizes, each warmed below), so
        # cuDNN's per-shape algorithm search pays for itself.
        torch.backends.cudnn.benchmark = True

    def forward(items: list[Any]) -> list[Any]:
        batch = handler.collate(items)
        with torch.inference_mode(), torch.autocast(**ac) if ac else nullcontext():
            output = handler.predict(batch)
        return handler.split(output)

    run: ForwardFn = forward
    decode: DecodeFn = handler.decode
    if settings.fault_injection:
        from services.gpu_worker.faults import faulty_decoder, faulty_forward

        logger.warning("FAULT INJECTION is on: images can kill or stall this worker (tests)")
        run, decode = faulty_forward(run), faulty_decoder(decode)
    # A compiled model has static shapes (see models/handlers/tensors.py): buckets keep
    # their number small.
    buckets = settings.batch_buckets or settings.compile
    if buckets:
        run = bucketed(run, settings.max_batch_size)
    served = Served(spec, handler, decode, run)
    # Warm-up: the first call is slow (allocations, lazy init); a failure here is a bug
    # in the handler, better found at start-up than on the first request.
    try:
        params = handler.Params()
    except ValidationError:
        logger.info("model %s: its Params have required fields; no warm-up", spec.name)
        return served
    item = handler.decode(_warmup_image(), params)
    sizes = warmup_sizes(device.type, settings.max_batch_size, buckets, settings.compile)
    start = time.perf_counter()
    try:
        for size in sizes:
            forward([item] * size)
    except Exception as exc:  # eager raises RuntimeError; Dynamo its own exception types
        said = str(exc)
        found = [said.find(marker) for marker in _LAYOUT_ERRORS if marker in said]
        if settings.channels_last and found:
            # From the marker on: Dynamo's message wraps the view error in lines of its own.
            said = said[found[0] :].splitlines()[0][:300].rstrip(" .')")
            raise ConfigError(
                f"model {spec.name!r} fails on channels_last (NHWC) batches: {said}. "
                "Its forward calls .view on an activation whose memory layout follows the "
                "input's; use .reshape or torch.flatten there, or set VISIONQ_CHANNELS_LAST=0"
            ) from exc
        raise
    if device.type == "cuda":
        torch.cuda.synchronize()
    logger.info(
        "model %s warmed up for batch sizes %s in %.1f s", spec.name, sizes,
        time.perf_counter() - start,
    )  # fmt: skip
    return served


def build_served(spec: ModelSpec, settings: WorkerSettings, device: torch.device) -> Served:
    """Make the spec's handler, set it up on ``device`` and wrap it for the runtime."""
    handler = make_handler(spec, handler_options(settings))
    handler.setup(device, spec)
    return wrap_handler(handler, spec, settings, device)
