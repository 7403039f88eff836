"""Segmentation: a class per pixel at the image's own size, as a PNG or run lengths.

Every image is resized to the model's square input (520 x 520 for torchvision's segmenters)
so a batch is one tensor with no padding: padding would change the logits near the borders
and make an image's map depend on its batch-mates. The logits are resized back to the
image's own (oriented) size with bilinear interpolation before the argmax, as torchvision's
segmentation references do -- up to ``MAX_MAP_PIXELS``: a bigger image gets its class map
computed at that many pixels (same aspect ratio) and enlarged by nearest neighbour, so the
cost of the answer is bounded like the cost of the decode. A 36-megapixel photo took 11.8 s
of one CPU core before (21 classes upsampled to its full size), enough for one 64-image
request to run a batch past the time limit and take the worker down.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.handlers.base import Handler
from models.handlers.params import SegmentationParams
from models.handlers.tensors import Normalizer, channels_last_for, prepare_module
from models.preprocess import FAST_REDUCING_GAP
from models.specs import ModelSpec

logger = logging.getLogger(__name__)

SegItem = tuple[np.ndarray, tuple[int, int]]  # uint8 (3, S, S), (height, width)


def run_lengths(mask: np.ndarray) -> dict[str, list[int]]:
    """Row-major run lengths of a class map: ``{"values": [...], "counts": [...]}``."""
    flat = mask.reshape(-1)
    if flat.size == 0:
        return {"values": [], "counts": []}
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    counts = np.diff(np.r_[starts, flat.size])
    return {"values": flat[starts].astype(int).tolist(), "counts": counts.astype(int).tolist()}


# Above this many upsampled logits (classes x pixels), classes are resized one at a time so
# a 40-megapixel photo costs two maps of its size instead of one per class.
_CHUNKED_ABOVE = 64_000_000


# The most pixels a class map is computed at (2048 x 2048); bigger maps are enlarged from it.
MAX_MAP_PIXELS = 2048 * 2048


def _bounded(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` (H, W), scaled down to at most ``MAX_MAP_PIXELS`` keeping its aspect ratio."""
    height, width = size
    if height * width <= MAX_MAP_PIXELS:
        return size
    scale = (MAX_MAP_PIXELS / (height * width)) ** 0.5
    return max(1, min(height, int(height * scale))), max(1, min(width, int(width * scale)))


def _class_map(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Logits (C, S, S) -> bilinear to ``size`` -> argmax: uint8 (H, W).

    Above ``MAX_MAP_PIXELS`` the argmax is taken at the bounded size and the map enlarged
    to ``size`` by nearest neighbour (Pillow ``Image.NEAREST``).
    """
    bounded = _bounded(size)
    if bounded != size:
        small = _class_map(logits, bounded)
        full = Image.fromarray(small, mode="L").resize((size[1], size[0]), Image.Resampling.NEAREST)
        return np.asarray(full, dtype=np.uint8)

    def up(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(
            x[None], size=size, mode="bilinear", align_corners=False
        )[0]

    if logits.shape[0] * size[0] * size[1] <= _CHUNKED_ABOVE:
        return up(logits).argmax(0).to(torch.uint8).cpu().numpy()
    best = up(logits[:1])[0]
    index = torch.zeros(size, dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[0]):
        score = up(logits[c : c + 1])[0]
        better = score > best  # strict: ties keep the lower index, as argmax does
        best = torch.where(better, score, best)
        index[better] = c
    return index.cpu().numpy()


class SegmentationHandler(Handler):
    """uint8 (3, S, S) + size per image -> class map -> ``{"mask", "classes", ...}``."""

    task = "segmentation"
    Params = SegmentationParams

    def setup(self, device: torch.device, spec: ModelSpec) -> None:
        """Load the segmenter."""
        self.device = device
        self.size = spec.preprocess.input_size
        layout = channels_last_for(spec, self.options.channels_last)
        self.normalize = Normalizer(spec.preprocess, device, layout)
        self.module = prepare_module(
            self.load_model(spec, device).module,
            device,
            channels_last=layout,
            compile=self.options.compile,
            fold=self.options.fold_batchnorm,
        )

    def decode(self, data: bytes, params: Any) -> SegItem:
        """The oriented image resized to S x S (bilinear, as torchvision on PIL), its size.

        With ``VISIONQ_FAST_DECODE`` a JPEG is decoded at 1/2-1/8 scale keeping both sides
        >= S, and big images are box-reduced by a whole factor before the bilinear resize
        (``FAST_REDUCING_GAP``); the map is still returned at the full size.
        """
        image, (width, height) = self.decode_scaled(data, self.size)
        gap = FAST_REDUCING_GAP if self.options.fast_decode else None
        resized = image.resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=gap)
        array = np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))
        return array, (height, width)

    def collate(self, items: list[SegItem]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """uint8 (N, 3, S, S) and the sizes to map back to."""
        return np.stack([array for array, _ in items]), [size for _, size in items]

    def predict(
        self, batch: tuple[np.ndarray, list[tuple[int, int]]]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """ONE forward: logits (N, classes, S, S), float32."""
        arrays, sizes = batch
        return self.module(self.normalize(arrays))["out"].float(), sizes

    def split(self, output: tuple[torch.Tensor, list[tuple[int, int]]]) -> list[np.ndarray]:
        """Per image: logits resized to its own size, argmax -> uint8 (H, W) class map."""
        logits, sizes = output
        return [_class_map(row, size) for row, size in zip(logits, sizes, strict=True)]

    def encode(self, item_output: np.ndarray, params: SegmentationParams) -> dict[str, Any]:
        """``{"width", "height", "mask": {"format", ...}, "classes": [{"index", "label",
        "fraction"}]}``; classes present only, most pixels first."""
        height, width = item_output.shape
        counts = np.bincount(item_output.reshape(-1), minlength=len(self.labels) or 1)
        classes = [
            {
                "index": int(i),
                "label": self.label(int(i)),
                "fraction": float(counts[i]) / counts.sum(),
            }
            for i in np.argsort(-counts, kind="stable")
            if counts[i] > 0
        ]
        mask: dict[str, Any] = {"format": params.format}
        if params.format == "png":
            buf = io.BytesIO()
            Image.fromarray(item_output, mode="L").save(buf, format="PNG", optimize=False)
            mask["data"] = base64.b64encode(buf.getvalue()).decode()
        else:
            mask.update(run_lengths(item_output))
        return {"width": width, "height": height, "mask": mask, "classes": classes}
