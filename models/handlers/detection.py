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

from models.handlers.base import Handler
from models.handlers.params import DetectionParams
from models.handlers.tensors import to_device_float
from models.specs import ModelSpec

logger = logging.getLogger(__name__)


class DetectionHandler(Handler):
    """uint8 (3, H, W) per image -> list of tensors -> ``{"detections": [...]}``."""

    task = "detection"
    Params = DetectionParams

    def setup(self, device: torch.device, spec: ModelSpec) -> None:
        """Load the detector (weights through the usual order)."""
        self.device = device
        self.module = self.load_model(spec, device).module

    def decode(self, data: bytes, params: Any) -> np.ndarray:
        """uint8 (3, H, W) at the image's own, oriented size."""
        image = self.decode_image(data)
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def collate(self, items: list[np.ndarray]) -> list[torch.Tensor]:
        """float (3, H, W) in [0, 1] on the device, one per image (sizes may differ)."""
        return [to_device_float(item, self.device) for item in items]

    def predict(self, batch: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """ONE forward over the list; boxes, labels, scores per image, on the CPU."""
        outputs = self.module(batch)
        return [{k: v.float().cpu() for k, v in out.items()} for out in outputs]

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
