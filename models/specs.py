"""Model specifications: what a served model is, where its parts live, how inputs are prepared.

Torch-free on purpose: the API process imports this to list and validate models.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.common.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Interpolation = Literal["bilinear", "bicubic"]
ModelKind = Literal["torchvision", "torchscript", "export"]


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: resize the shorter side, center crop, normalize."""

    input_size: int
    resize_size: int
    interpolation: Interpolation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ModelSpec:
    """One servable model: its kind, preprocessing and where its weights and labels come from."""

    name: str
    kind: ModelKind
    preprocess: Preprocess
    task: str = "classification"
    arch: str | None = None
    weights_enum: str | None = None
    weights_filename: str | None = None
    weights_url: str | None = None
    weights_path: Path | None = None
    archive_path: Path | None = None
    labels_path: Path | None = None
    num_classes: int = 1000


def _imagenet(resize_size: int, interpolation: Interpolation = "bilinear") -> Preprocess:
    return Preprocess(224, resize_size, interpolation, IMAGENET_MEAN, IMAGENET_STD)


_TORCHVISION_URL = "https://download.pytorch.org/models/"


def _builtin(
    arch: str, enum: str, filename: str, resize_size: int, interpolation: Interpolation
) -> ModelSpec:
    return ModelSpec(
        name=arch,
        kind="torchvision",
        preprocess=_imagenet(resize_size, interpolation),
        arch=arch,
        weights_enum=enum,
        weights_filename=filename,
        weights_url=_TORCHVISION_URL + filename,
    )


# Copied from torchvision's weight metadata (tests/unit/test_models_specs.py checks them) so
# that the API can describe models without importing torch.
BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _builtin(
            "resnet18", "ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth", 256, "bilinear"
        ),
        _builtin(
            "resnet50", "ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 232, "bilinear"
        ),
        _builtin(
            "mobilenet_v3_small",
            "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
            "mobilenet_v3_small-047dcff4.pth",
            256,
            "bilinear",
        ),
        _builtin(
            "mobilenet_v3_large",
            "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
            "mobilenet_v3_large-5c1a4163.pth",
            232,
            "bilinear",
        ),
        _builtin(
            "efficientnet_b0",
            "EfficientNet_B0_Weights.IMAGENET1K_V1",
            "efficientnet_b0_rwightman-7f5810bc.pth",
            256,
            "bicubic",
        ),
        _builtin(
            "convnext_tiny",
            "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
            "convnext_tiny-983f1562.pth",
            236,
            "bilinear",
        ),
        _builtin(
            "vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1", "vit_b_16-c867db91.pth", 256, "bilinear"
        ),
    )
}


def read_labels_file(path: Path) -> list[str]:
    """Labels from a file: a JSON list of strings, or one label per line (blank lines skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read labels file {path}: {exc}") from exc
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"labels file {path} is not valid JSON: {exc}") from exc
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"labels file {path} must hold a JSON list of strings")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ConfigError(f"labels file {path} holds no labels")
    return labels


def load_registry(models_file: Path | None) -> dict[str, ModelSpec]:
    """The built-in models plus the entries of a models file (TOML); entries override builtins."""
    registry = dict(BUILTIN_MODELS)
    if models_file is None:
        return registry
    # Imported here because models_file.py builds ModelSpec objects from this module.
    from models.models_file import parse_models_file

    for spec in parse_models_file(models_file):
        if spec.name in BUILTIN_MODELS:
            logger.info("models file %s overrides built-in model %s", models_file, spec.name)
        registry[spec.name] = spec
    return registry
