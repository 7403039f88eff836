"""Detection: torchvision detectors; boxes in the pixel coordinates of the image as shown.

Images keep their own size (the detector resizes and pads internally, and maps boxes back),
so images of different sizes share ONE forward pass. Coordinates are those of the image
after EXIF orientation (what a viewer shows). The detectors keep their own internal floor
(Faster R-CNN 0.05, SSDlite 0.001, RetinaNet 0.05) below ``score_threshold``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.handlers.base import Handler
from models.handlers.params import DetectionParams
from models.handlers.tensors import to_device_float
from models.specs import ModelSpec

logger = logging.getLogger(__name__)

MAX_SIDE = 1333  # the longest side torchvision's detectors resize to (RetinaNet, Faster R-CNN)


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

    def decode(self, data: bytes, params: Any) -> tuple[np.ndarray, float]:
        """uint8 (3, H, W) at the image's own, oriented size, and the scale back to it.

        Images longer than ``MAX_SIDE`` are shrunk first (every built-in detector resizes
        to at most 1333 pixels anyway): a 40-megapixel photo would otherwise cost ~0.5 GB
        as a float tensor. Boxes are scaled back to the original pixels in ``split``. With
        ``VISIONQ_FAST_DECODE`` a JPEG is decoded at 1/2-1/8 scale, both sides kept at least
        the model's input size (the detector's own transform only shrinks from there).
        """
        image, full = self.decode_scaled(data, self.min_side)
        # libjpeg's scaled pixel i covers source pixels [f*i, f*(i+1)): the factor is the
        # power of two, not full / decoded, which the rounded-up last pixel would skew.
        scale = float(round(max(full) / max(image.size)))
        if max(image.size) > MAX_SIDE:
            shrink = max(image.size) / MAX_SIDE
            # At least one pixel a side: a 30000x1 strip would otherwise be asked for 0 rows.
            size = (max(1, round(image.width / shrink)), max(1, round(image.height / shrink)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
            scale *= shrink
        array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
        return array, scale

    def collate(
        self, items: list[tuple[np.ndarray, float]]
    ) -> tuple[list[torch.Tensor], list[float]]:
        """float (3, H, W) in [0, 1] on the device, one per image (sizes may differ)."""
        return [to_device_float(item, self.device) for item, _ in items], [s for _, s in items]

    def predict(
        self, batch: tuple[list[torch.Tensor], list[float]]
    ) -> list[dict[str, torch.Tensor]]:
        """ONE forward over the list; boxes (original pixels), labels, scores, on the CPU."""
        images, scales = batch
        outputs = self.module(images)
        results = []
        for out, scale in zip(outputs, scales, strict=True):
            result = {k: v.float().cpu() for k, v in out.items()}
            if scale != 1.0:
                result["boxes"] = result["boxes"] * scale
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
