"""The model-handler contract: the one extension point for serving a model (no torch here).

A handler turns image bytes into a JSON result in six small steps; the worker runtime
calls them in this order and owns everything around them (queues, batching, claims,
delivery counting, per-item errors, OOM splitting, buckets, autocast, metrics)::

    setup(device, spec)                  once, on the inference thread
    decode(data, params) -> item         per image, on the decode threads (CPU)
    collate(items) -> batch              per batch, on the inference thread
    predict(batch) -> output             ONE forward pass per batch (under inference_mode
                                         and, on CUDA, autocast)
    split(output) -> [item_output, ...]  one entry per item, in order
    encode(item_output, params) -> dict  per item: the job's JSON ``result``

``Params`` is a pydantic model of the per-request options: the API validates the form
fields of a request with it (unknown or invalid fields are 422) and publishes its JSON
schema in ``GET /v1/models``, so the module that defines it must import without torch
(import torch inside ``setup`` or in the worker-only module). An exception from
``decode`` fails that image only (``invalid_image`` for VisionqError-free errors); an
exception from ``collate``/``predict``/``split`` makes the runtime split the batch in
halves down to the single item that fails (``inference_error`` / ``out_of_memory``); an
exception from ``encode`` fails that item only. See docs/HANDLERS.md for a worked example.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from models.specs import ModelSpec

if TYPE_CHECKING:
    from PIL import Image

    from models.loader import LoadedModel

logger = logging.getLogger(__name__)


class NoParams(BaseModel):
    """A handler without per-request options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class HandlerOptions:
    """Worker settings a handler may need: decode limits and how to find weights."""

    max_image_pixels: int = 40_000_000
    weights_dir: Path | None = None
    allow_random_weights: bool = False
    allow_download: bool = True
    channels_last: bool = True
    # VISIONQ_FOLD_BATCHNORM: on the CPU, BatchNorm folded into the convolution before it
    fold_batchnorm: bool = True
    compile: bool = False
    gpu_decode: bool = False
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels flattened onto it
    accepted_formats: tuple[str, ...] | None = None  # None: every format this build reads
    fast_decode: bool = False  # VISIONQ_FAST_DECODE: JPEGs decoded at reduced scale (inexact)
    # float16 / bfloat16: weights kept resident in it on CUDA (the autocast dtype); None: float32
    weights_dtype: str | None = None


class Handler:
    """Base class of every handler; override what your model needs (see the module doc).

    ``collate`` defaults to the list of items and ``split`` to ``list(output)``; ``setup``,
    ``decode``, ``predict`` and ``encode`` must be written. ``task`` names the kind of
    result (``classification``, ``detection``, ...) for ``GET /v1/models`` and metrics.
    """

    task: ClassVar[str] = "custom"
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, options: HandlerOptions | None = None) -> None:
        self.options = options or HandlerOptions()
        self.labels: list[str] = []
        self.weights_source: Any = None  # a models.weights.WeightsSource once loaded

    # -- the contract -------------------------------------------------------------------

    def setup(self, device: Any, spec: ModelSpec) -> None:
        """Load weights and anything else the handler needs onto ``device`` (torch.device)."""
        raise NotImplementedError

    def decode(self, data: bytes, params: Any) -> Any:
        """One upload's bytes -> one model input (runs on a decode thread)."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        """Items of one batch -> what ``predict`` takes (default: the list itself)."""
        return items

    def predict(self, batch: Any) -> Any:
        """ONE forward pass over the whole batch."""
        raise NotImplementedError

    def split(self, output: Any) -> list[Any]:
        """The batch output -> one output per item, in the order of the items."""
        return list(output)

    def encode(self, item_output: Any, params: Any) -> dict[str, Any]:
        """One item's output -> its JSON-ready result."""
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------

    def decode_image(self, data: bytes) -> Image.Image:
        """The upload as the user sees it: RGB, oriented, full size (pixel cap enforced)."""
        return self.decode_scaled(data, None)[0]

    def decode_scaled(
        self, data: bytes, min_side: int | None
    ) -> tuple[Image.Image, tuple[int, int]]:
        """``decode_image``, but with ``VISIONQ_FAST_DECODE`` on a JPEG may be decoded at
        1/2, 1/4 or 1/8 scale, both sides kept >= ``min_side`` (libjpeg DCT scaling; see
        ``models.imaging.decode.decode_scaled``). Also (width, height) of the full picture."""
        from models.preprocess import decode_scaled

        return decode_scaled(
            data,
            max_pixels=self.options.max_image_pixels,
            background=self.options.background,
            formats=self.options.accepted_formats,
            min_side=min_side if self.options.fast_decode else None,
        )

    def load_model(self, spec: ModelSpec, device: Any) -> LoadedModel:
        """The spec's module in eval mode on ``device``, through the usual weights order."""
        from models.loader import load_model

        loaded = load_model(
            spec,
            weights_dir=self.options.weights_dir,
            allow_random=self.options.allow_random_weights,
            allow_download=self.options.allow_download,
            device=device,
        )
        self.labels = loaded.labels
        self.weights_source = loaded.source
        return loaded

    def label(self, index: int) -> str:
        """The label of a class index (its number when the model has no such label)."""
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)
