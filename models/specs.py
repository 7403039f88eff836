"""Model specifications: what a served model is, where its parts live, how inputs are prepared.

Torch-free on purpose: the API process imports this to list and validate models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from services.common.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Interpolation = Literal["bilinear", "bicubic"]
ModelKind = Literal["torchvision", "torchscript", "export", "none"]
Task = Literal["classification", "detection", "embedding", "segmentation", "noop"]
TASKS: tuple[str, ...] = ("classification", "detection", "embedding", "segmentation", "noop")


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
    handler: str | None = None  # "package.module:Class"; None = the task's built-in handler
    options: dict[str, Any] = field(default_factory=dict)  # the models file's [models.options]
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
CLASSIFIERS: dict[str, ModelSpec] = {
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


# Detectors and segmenters: torchvision's weight metadata (enum, file, classes). Detectors
# resize inside the model (input_size is their shorter-side target, for listing only);
# segmenters get a fixed square input (see models/handlers/segmentation.py for why).
_DETECTORS: tuple[tuple[str, str, str, int], ...] = (
    (
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1",
        "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth",
        320,
    ),
    (
        "ssdlite320_mobilenet_v3_large",
        "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1",
        "ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
        320,
    ),
    (
        "retinanet_resnet50_fpn_v2",
        "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1",
        "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
        800,
    ),
)
_SEGMENTERS: tuple[tuple[str, str, str], ...] = (
    (
        "lraspp_mobilenet_v3_large",
        "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
        "lraspp_mobilenet_v3_large-d234d4ea.pth",
    ),
    (
        "deeplabv3_mobilenet_v3_large",
        "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
        "deeplabv3_mobilenet_v3_large-fc3c493d.pth",
    ),
)


def _task_specs() -> dict[str, ModelSpec]:
    specs: list[ModelSpec] = []
    for arch, enum, filename, size in _DETECTORS:
        specs.append(
            ModelSpec(
                name=arch,
                kind="torchvision",
                preprocess=Preprocess(size, size, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                task="detection",
                arch=arch,
                weights_enum=enum,
                weights_filename=filename,
                weights_url=_TORCHVISION_URL + filename,
                num_classes=91,
            )
        )
    for arch, enum, filename in _SEGMENTERS:
        specs.append(
            ModelSpec(
                name=arch,
                kind="torchvision",
                preprocess=Preprocess(520, 520, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                task="segmentation",
                arch=arch,
                weights_enum=enum,
                weights_filename=filename,
                weights_url=_TORCHVISION_URL + filename,
                num_classes=21,
            )
        )
    for classifier in CLASSIFIERS.values():
        # Same weights file as the classifier; the handler removes the head after loading.
        specs.append(
            dataclasses.replace(classifier, name=f"{classifier.name}_embedding", task="embedding")
        )
    specs.append(
        ModelSpec(
            name="noop",
            kind="none",
            preprocess=Preprocess(1, 1, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
            task="noop",
        )
    )
    return {spec.name: spec for spec in specs}


#: Every built-in model: classifiers, their embedders, detectors, segmenters and ``noop``.
BUILTIN_MODELS: dict[str, ModelSpec] = {**CLASSIFIERS, **_task_specs()}


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
