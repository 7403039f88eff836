"""A worked example of a custom handler: the mean colour and brightness of each image.

Declared in a models file (``VISIONQ_MODELS_FILE``)::

    [[models]]
    name = "mean_color"
    handler = "examples.handlers.mean_color:MeanColorHandler"
    options = { thumbnail = 32 }

The API imports this module to validate the form fields against ``Params`` and to publish
their schema, so torch is imported inside the methods that run in the worker only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.handlers import Handler
from models.specs import ModelSpec

if TYPE_CHECKING:
    import torch


class MeanColorParams(BaseModel):
    """Per-request options: form fields of POST /v1/predict."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is a 422 naming it

    digits: int = Field(4, ge=0, le=8, description="decimal places of the returned values")


class MeanColorHandler(Handler):
    """uint8 thumbnail per image -> one pooling pass per batch -> mean RGB and brightness."""

    task = "color"
    Params = MeanColorParams

    def setup(self, device: Any, spec: ModelSpec) -> None:
        """Build the 'model' on the device; ``spec.options`` is the models file's table."""
        import torch

        self.device = device
        self.size = int(spec.options.get("thumbnail", 32))
        # ITU-R BT.601 luma weights: brightness as people perceive it.
        self.luma = torch.tensor([0.299, 0.587, 0.114], device=device)
        self.pool = torch.nn.AdaptiveAvgPool2d(1).to(device)

    def decode(self, data: bytes, params: MeanColorParams) -> np.ndarray:
        """uint8 (3, S, S): the image as shown (oriented, RGB), resized to a thumbnail."""
        image = self.decode_image(data).resize((self.size, self.size))
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def collate(self, items: list[np.ndarray]) -> torch.Tensor:
        """float (N, 3, S, S) in [0, 1] on the device."""
        import torch

        return torch.from_numpy(np.stack(items)).to(self.device).float() / 255.0

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """ONE pass over the batch: (N, 4) = mean R, G, B and brightness."""
        import torch

        rgb = self.pool(batch).flatten(1)
        return torch.cat([rgb, (rgb @ self.luma)[:, None]], dim=1).cpu()

    def split(self, output: torch.Tensor) -> list[list[float]]:
        """One row per image."""
        rows: list[list[float]] = output.tolist()
        return rows

    def encode(self, item_output: list[float], params: MeanColorParams) -> dict[str, Any]:
        """The job's JSON result."""
        r, g, b, brightness = (round(v, params.digits) for v in item_output)
        return {"mean_rgb": [r, g, b], "brightness": brightness}
