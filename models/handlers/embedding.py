"""Embedding: a classifier's backbone (its last Linear layer removed) as a feature vector.

Built in as ``<classifier>_embedding`` for every built-in classifier, on the classifier's
own weights and preprocessing. ``normalize`` L2-normalises; ``encoding=base64-f16`` sends
little-endian float16 bytes in base64 (a quarter of the JSON size of float32 lists).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import numpy as np
import torch

from models.handlers.classification import ClassificationHandler
from models.handlers.params import EmbeddingParams

logger = logging.getLogger(__name__)


def remove_head(module: torch.nn.Module) -> torch.nn.Module:
    """Replace the classifier's last Linear layer by Identity (resnet ``fc``, vit ``heads``,
    mobilenet/efficientnet/convnext ``classifier``), so the module returns features."""
    for name in ("fc", "heads", "classifier", "head"):
        head = getattr(module, name, None)
        if isinstance(head, torch.nn.Linear):
            setattr(module, name, torch.nn.Identity())
            return module
        if isinstance(head, torch.nn.Sequential):
            linear = [i for i, layer in enumerate(head) if isinstance(layer, torch.nn.Linear)]
            if linear:
                head[linear[-1]] = torch.nn.Identity()
                return module
    raise ValueError(f"cannot find the classification head of {type(module).__name__}")


class EmbeddingHandler(ClassificationHandler):
    """uint8 (3, S, S) per image -> backbone features -> ``{"embedding", "dim"}``."""

    task = "embedding"
    Params = EmbeddingParams  # type: ignore[assignment]

    def adapt(self, module: torch.nn.Module) -> torch.nn.Module:
        """Remove the head."""
        return remove_head(module)

    def predict(self, batch: Any) -> torch.Tensor:
        """Features (N, D), float32, on the CPU."""
        features: torch.Tensor = self.module(self.normalize(batch))
        return features.float().flatten(1).cpu()

    def encode(self, item_output: torch.Tensor, params: EmbeddingParams) -> dict[str, Any]:  # type: ignore[override]
        """``{"embedding": [...] or "<base64>", "dim": D, "encoding", "normalized"}``."""
        vector = item_output
        if params.normalize:
            vector = torch.nn.functional.normalize(vector, dim=0)
        values = vector.numpy().astype(np.float32)
        out: dict[str, Any] = {
            "dim": int(values.shape[0]),
            "encoding": params.encoding,
            "normalized": params.normalize,
        }
        if params.encoding == "base64-f16":
            out["embedding"] = base64.b64encode(values.astype("<f2").tobytes()).decode()
        else:
            # float32 -> Python float is exact, and JSON keeps enough digits to round-trip.
            out["embedding"] = values.tolist()
        return out
