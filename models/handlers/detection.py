"""Detection: torchvision detectors; boxes in the pixel coordinates of the image as shown.

Images keep their own size (the detector resizes and pads internally, and maps boxes back),
so images of different sizes share ONE forward pass. Coordinates are those of the image
after EXIF orientation (what a viewer shows). The detectors keep their own internal floor
(Faster R-CNN 0.05, SSDlite 0.001, RetinaNet 0.05) below ``score_threshold``.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from models.handlers.base import Handler
from models.handlers.params import DetectionParams
from models.handlers.tensors import to_device_float
from models.specs import ModelSpec

logger = logging.getLogger(__name__)

MAX_SIDE = 1333  # the longest side torchvision's detectors resize to (RetinaNet, Faster R-CNN)


class BoxScale(NamedTuple):
    """From the decoded image's pixels back to the original's: x and y factors, and the
    original (oriented) width and height that boxes are clipped to."""

    sx: float
    sy: float
    width: float
    height: float


class DetectionHandler(Handler):
    """uint8 (3, H, W) per image -> list of tensors -> ``{"detections": [...]}``."""

    task = "detection"
    Params = DetectionParams
    # VISIONQ_FAST_DECODE keeps both sides at least this (the model's input size; None, as
    # for a subclass whose setup does not set it: full decode).
    min_side: int | None = None

    def setup(self, device: torch.device, spec: ModelSpec) -> None:
        """Load the detector (weights through the usual order)."""
        self.device = device
        self.min_side = spec.preprocess.input_size
        self.module = self.load_model(spec, device).module

    def decode(self, data: bytes, params: Any) -> tuple[np.ndarray, BoxScale]:
        """uint8 (3, H, W) at the image's own, oriented size, and how to map boxes back to it.

        Images longer than ``MAX_SIDE`` are shrunk first (every built-in detector resizes
        to at most 1333 pixels anyway): a 40-megapixel photo would otherwise cost ~0.5 GB
        as a float tensor. Boxes are scaled back to the original pixels in ``predict``, per
        axis (a 30000x1 strip keeps its one row: its two axes shrink differently), and
        clipped to the image. With ``VISIONQ_FAST_DECODE`` a JPEG is decoded at 1/2-1/8
        scale, both sides kept at least the model's input size (the detector's own
        transform only shrinks from there).
        """
        image, full = self.decode_scaled(data, self.min_side)
        # libjpeg's scaled pixel i covers source pixels [f*i, f*(i+1)): the factor is the
        # power of two, not full / decoded, which the rounded-up last pixel would skew.
        scale = float(round(max(full) / max(image.size)))
        sx = sy = scale
        if max(image.size) > MAX_SIDE:
            shrink = max(image.size) / MAX_SIDE
            # At least one pixel a side: a 30000x1 strip would otherwise be asked for 0 rows.
            size = (max(1, round(image.width / shrink)), max(1, round(image.height / shrink)))
            sx *= image.width / size[0]
            sy *= image.height / size[1]
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
        return array, BoxScale(sx, sy, float(full[0]), float(full[1]))

    def collate(
        self, items: list[tuple[np.ndarray, BoxScale]]
    ) -> tuple[list[torch.Tensor], list[BoxScale]]:
        """float (3, H, W) in [0, 1] on the device, one per image (sizes may differ)."""
        return [to_device_float(item, self.device) for item, _ in items], [s for _, s in items]

    def predict(
        self, batch: tuple[list[torch.Tensor], list[BoxScale]]
    ) -> list[dict[str, torch.Tensor]]:
        """ONE forward over the list; boxes (original pixels), labels, scores, on the CPU."""
        images, scales = batch
        outputs = self.module(images)
        results = []
        for out, back in zip(outputs, scales, strict=True):
            result = {k: v.float().cpu() for k, v in out.items()}
            if (back.sx, back.sy) != (1.0, 1.0):
                boxes = result["boxes"] * torch.tensor([back.sx, back.sy, back.sx, back.sy])
                limit = torch.tensor([back.width, back.height, back.width, back.height])
                result["boxes"] = torch.minimum(boxes.clamp(min=0), limit)
            results.append(result)
        return results

    def encode(
        self, item_output: dict[str, torch.Tensor], params: DetectionParams
    ) -> dict[str, Any]:
        """``{"detections": [{"box": [x1, y1, x2, y2], "label", "index", "score"}]}``."""
        scores = item_output["scores"]
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[scores[order] >= params.score_threshold][: params.max_detections]
        boxes = item_output["boxes"][order].tolist()
        labels = item_output["labels"][order].long().tolist()
        return {
            "detections": [
                {"box": box, "label": self.label(index), "index": index, "score": score}
                for box, index, score in zip(boxes, labels, scores[order].tolist(), strict=True)
            ]
        }
