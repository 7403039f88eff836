"""Everything one served model needs on the inference thread: how to decode, stack, run.

Built once per model after loading, on the thread that runs the forward passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from models.loader import LoadedModel
from services.common.settings import WorkerSettings
from services.gpu_worker.device import autocast_kwargs
from services.gpu_worker.inference import ForwardFn, Normalizer, bucketed
from services.gpu_worker.prepare import DecodeFn, make_decoder

logger = logging.getLogger(__name__)


@dataclass
class Served:
    """A loaded model with its decode, stack and forward functions."""

    loaded: LoadedModel
    decode: DecodeFn
    stack: Callable[[list[Any]], Any]
    run: ForwardFn


def build_served(loaded: LoadedModel, settings: WorkerSettings, device: torch.device) -> Served:
    """Wire the settings (layout, autocast, compile, buckets, GPU decode) around a model."""
    spec = loaded.spec
    module = loaded.module
    normalize = Normalizer(spec.preprocess, device, settings.channels_last)
    if normalize.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if settings.compile:
        # Compiles lazily on the first call of each shape; buckets keep shapes few.
        module = torch.compile(module)  # type: ignore[assignment]
    ac = autocast_kwargs(device.type, settings.autocast_dtype)

    def run(batch: np.ndarray) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(**ac) if ac else nullcontext():
            out: torch.Tensor = module(normalize(batch))
            return out

    forward: ForwardFn = run
    decode: DecodeFn = make_decoder(
        spec.preprocess,
        settings.max_image_pixels,
        background=settings.background_rgb,
        formats=settings.accepted_formats,
        fast_decode=settings.fast_decode,
    )
    if settings.fault_injection:
        from services.gpu_worker.faults import faulty_decoder, faulty_forward

        logger.warning("FAULT INJECTION is on: images can kill or stall this worker (tests)")
        forward, decode = faulty_forward(forward), faulty_decoder(decode)
    if settings.batch_buckets:
        forward = bucketed(forward, settings.max_batch_size)
    stack: Callable[[list[Any]], Any] = np.stack
    if settings.gpu_decode:
        if device.type == "cuda":
            from services.gpu_worker.gpu_decode import make_gpu_decoder, stack_batch

            decode = make_gpu_decoder(
                spec.preprocess,
                settings.max_image_pixels,
                device,
                background=settings.background_rgb,
                formats=settings.accepted_formats,
            )
            stack = partial(stack_batch, device=device)
        else:
            logger.warning("VISIONQ_GPU_DECODE needs CUDA; decoding on the CPU")
    size = spec.preprocess.input_size
    forward(np.zeros((1, 3, size, size), dtype=np.uint8))  # warm-up: the first call is slow
    return Served(loaded, decode, stack, forward)
