"""Model specs, models file and weights resolution; torch-free (torch is in models.loader)."""

from __future__ import annotations

from models.specs import BUILTIN_MODELS, ModelSpec, Preprocess, load_registry
from models.weights import WeightsSource, resolve_weights

__all__ = [
    "BUILTIN_MODELS",
    "ModelSpec",
    "Preprocess",
    "WeightsSource",
    "load_registry",
    "resolve_weights",
]
