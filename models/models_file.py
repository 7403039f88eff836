"""Parsing of the models file (TOML, ``VISIONQ_MODELS_FILE``) into model specs.

Each ``[[models]]`` entry names exactly one of ``arch`` (a torchvision builder, with
``weights`` = a state dict), ``torchscript`` or ``export`` (an archive, with ``labels`` and
``input_size``). Relative paths resolve against the models file's folder.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, cast

from models.specs import (
    BUILTIN_MODELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TASKS,
    Interpolation,
    ModelKind,
    ModelSpec,
    Preprocess,
    read_labels_file,
)
from services.common.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ARCH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SOURCES = ("arch", "torchscript", "export")
_PREPROCESS_KEYS = {"input_size", "resize_size", "mean", "std", "interpolation"}
_ALLOWED_KEYS = {
    "name",
    "labels",
    "num_classes",
    *_SOURCES,
    "weights",
    *_PREPROCESS_KEYS,
    "task",
    "handler",
    "options",
}
_HANDLER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DEFAULT_PREPROCESS = Preprocess(224, 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


class _Entry:
    """Typed access to one ``[[models]]`` table; every complaint names the file and entry."""

    def __init__(self, models_file: Path, index: int, table: dict[str, Any]) -> None:
        self.file = models_file
        self.table = table
        name = table.get("name")
        self.where = f"{models_file}: models[{index}]" + (
            f" ({name!r})" if isinstance(name, str) else ""
        )

    def error(self, what: str) -> ConfigError:
        return ConfigError(f"{self.where}: {what}")

    def string(self, key: str) -> str | None:
        value = self.table.get(key)
        if value is not None and not isinstance(value, str):
            raise self.error(f"{key} must be a string, not {type(value).__name__}")
        return value

    def positive_int(self, key: str) -> int | None:
        value = self.table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(f"{key} must be a positive integer, not {value!r}")
        return value

    def triple(self, key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
        value = self.table.get(key)
        if value is None:
            return default
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
        ):
            raise self.error(f"{key} must be a list of three numbers, not {value!r}")
        return (float(value[0]), float(value[1]), float(value[2]))

    def path(self, key: str) -> Path | None:
        value = self.string(key)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.file.parent / path
        if not path.is_file():
            raise self.error(f"{key} file {path} does not exist")
        return path


def _preprocess(entry: _Entry, default: Preprocess | None) -> Preprocess:
    input_size = entry.positive_int("input_size")
    if input_size is None:
        if default is None:
            raise entry.error("input_size is required for torchscript and export models")
        input_size = default.input_size
    resize_size = entry.positive_int("resize_size")
    if resize_size is None:
        if default is not None and entry.table.get("input_size") is None:
            resize_size = default.resize_size
        else:
            # torchvision's usual 0.875 crop ratio (224 of 256).
            resize_size = round(input_size / 0.875)
    if resize_size < input_size:
        raise entry.error(
            f"resize_size ({resize_size}) must be at least input_size ({input_size}); "
            "a smaller resize would pad the crop with black"
        )
    interpolation = entry.string("interpolation")
    if interpolation is None:
        interpolation = default.interpolation if default is not None else "bilinear"
    if interpolation not in ("bilinear", "bicubic"):
        raise entry.error(f"interpolation must be 'bilinear' or 'bicubic', not {interpolation!r}")
    mean = entry.triple("mean", default.mean if default is not None else IMAGENET_MEAN)
    std = entry.triple("std", default.std if default is not None else IMAGENET_STD)
    if any(s <= 0 for s in std):
        raise entry.error(f"std values must be positive, not {list(std)}")
    return Preprocess(input_size, resize_size, cast(Interpolation, interpolation), mean, std)


def _spec(entry: _Entry) -> ModelSpec:
    unknown = sorted(set(entry.table) - _ALLOWED_KEYS)
    if unknown:
        raise entry.error(
            f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ALLOWED_KEYS))}"
        )
    name = entry.string("name")
    if name is None:
        raise entry.error("name is required")
    if not _NAME.match(name):
        raise entry.error(f"name {name!r} must be lowercase letters, digits and _.- (max 64)")
    given = [key for key in _SOURCES if key in entry.table]
    handler = entry.string("handler")
    if handler is not None and not _HANDLER.match(handler):
        raise entry.error(f"handler must look like 'package.module:ClassName', not {handler!r}")
    options = entry.table.get("options", {})
    if not isinstance(options, dict):
        raise entry.error("options must be a table ([models.options])")
    task = entry.string("task")
    if task is not None and task not in TASKS:
        raise entry.error(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if handler is not None and not given:
        # A custom handler may load everything itself: weights and labels are optional.
        return ModelSpec(
            name=name,
            kind="none",
            preprocess=_preprocess(entry, _DEFAULT_PREPROCESS),
            task=task or "custom",
            handler=handler,
            options=dict(options),
            weights_path=entry.path("weights"),
            labels_path=entry.path("labels"),
            num_classes=entry.positive_int("num_classes") or 1000,
        )
    if len(given) != 1:
        raise entry.error(
            "give exactly one of arch, torchscript or export"
            + (f" (found {', '.join(given)})" if given else "")
        )
    labels_path = entry.path("labels")
    labels_count = len(read_labels_file(labels_path)) if labels_path is not None else None
    num_classes = entry.positive_int("num_classes")
    if num_classes is not None and labels_count is not None and num_classes != labels_count:
        raise entry.error(
            f"num_classes = {num_classes} but labels file {labels_path} has {labels_count} labels"
        )
    num_classes = num_classes or labels_count or 1000

    if given[0] == "arch":
        arch = entry.string("arch")
        if arch is None or not _ARCH.match(arch):
            raise entry.error(f"arch must be a torchvision model builder name, not {arch!r}")
        if "weights" not in entry.table:
            raise entry.error(f"weights (a state dict file for {arch}) is required with arch")
        if (
            labels_path is None
            and num_classes != 1000
            and (task or "classification")
            in (
                "classification",
                "embedding",
            )
        ):
            raise entry.error(
                f"num_classes = {num_classes} needs a labels file (the default labels are "
                "the 1000 ImageNet categories)"
            )
        # A builtin arch keeps the preprocessing its torchvision weights were trained with.
        builtin = next(
            (s for s in BUILTIN_MODELS.values() if s.arch == arch and task in (None, s.task)),
            None,
        )
        if labels_path is None and builtin is not None and entry.table.get("num_classes") is None:
            num_classes = builtin.num_classes
        return ModelSpec(
            name=name,
            kind="torchvision",
            preprocess=_preprocess(entry, builtin.preprocess if builtin else _DEFAULT_PREPROCESS),
            task=task or (builtin.task if builtin else "classification"),
            handler=handler,
            options=dict(options),
            weights_enum=builtin.weights_enum if builtin else None,
            arch=arch,
            weights_path=entry.path("weights"),
            labels_path=labels_path,
            num_classes=num_classes,
        )

    kind = cast(ModelKind, given[0])
    if "weights" in entry.table:
        raise entry.error(f"weights is only for arch models; a {kind} archive holds its weights")
    if labels_path is None:
        raise entry.error(f"labels (a labels file) is required for {kind} models")
    return ModelSpec(
        name=name,
        kind=kind,
        preprocess=_preprocess(entry, None),
        task=task or "classification",
        handler=handler,
        options=dict(options),
        archive_path=entry.path(kind),
        labels_path=labels_path,
        num_classes=num_classes,
    )


def parse_models_file(models_file: Path) -> list[ModelSpec]:
    """The model specs declared in a models file; raises ConfigError saying what is wrong."""
    try:
        with models_file.open("rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read models file {models_file}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"models file {models_file} is not valid TOML: {exc}") from exc
    extra = sorted(set(document) - {"models"})
    if extra:
        raise ConfigError(
            f"{models_file}: unknown top-level key(s) {', '.join(extra)}; "
            "declare models as [[models]] tables"
        )
    tables = document.get("models", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{models_file}: 'models' must be an array of tables ([[models]])")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        spec = _spec(_Entry(models_file, index, table))
        if spec.name in seen:
            raise ConfigError(f"{models_file}: model {spec.name!r} is declared twice")
        seen.add(spec.name)
        specs.append(spec)
    return specs
