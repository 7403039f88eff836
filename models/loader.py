"""Loading a model spec into an eval-mode torch module on a device, with its labels."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torchvision

from models.specs import ModelSpec, read_labels_file
from models.weights import WeightsSource, no_weights_message, resolve_weights, torch_hub_dir
from services.common.errors import ConfigError

logger = logging.getLogger(__name__)

_RANDOM_WARNING = "RANDOM WEIGHTS: predictions are meaningless (model %s, %s)"


@dataclass
class LoadedModel:
    """A model ready for inference: eval mode, on its device, gradients off."""

    spec: ModelSpec
    module: torch.nn.Module
    labels: list[str]
    source: WeightsSource


def load_labels(spec: ModelSpec) -> list[str]:
    """The model's labels: its labels file, else the categories of its torchvision weights."""
    if spec.labels_path is not None:
        return read_labels_file(spec.labels_path)
    if spec.arch is None:
        raise ConfigError(f"model {spec.name!r} has no labels file; declare labels = <file>")
    try:
        # Metadata ships inside torchvision; reading it downloads nothing.
        if spec.weights_enum is not None:
            weights = torchvision.models.get_weight(spec.weights_enum)
        else:
            weights = torchvision.models.get_model_weights(spec.arch).DEFAULT
        categories = weights.meta["categories"]
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"model {spec.name!r}: torchvision has no labels for arch {spec.arch!r}; "
            "declare labels = <file> in the models file"
        ) from exc
    return [str(c) for c in categories]


def _builder(spec: ModelSpec) -> Callable[..., torch.nn.Module]:
    try:
        builder = torchvision.models.get_model_builder(spec.arch or "")
    except ValueError as exc:
        raise ConfigError(
            f"model {spec.name!r}: {spec.arch!r} is not a torchvision model builder"
        ) from exc
    return cast(Callable[..., torch.nn.Module], builder)


def _unwrap_state_dict(obj: Any) -> Mapping[str, Any]:
    # Training checkpoints often nest the weights and keep DataParallel's "module." prefix.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict, found {type(obj).__name__}")
    if obj and all(str(k).startswith("module.") for k in obj):
        obj = {str(k)[len("module.") :]: v for k, v in obj.items()}
    return cast(Mapping[str, Any], obj)


def _load_state_dict(spec: ModelSpec, module: torch.nn.Module, path: str) -> None:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        state = _unwrap_state_dict(raw)
    except Exception as exc:  # torch.load raises many types for a bad file
        raise ConfigError(
            f"model {spec.name!r}: cannot read weights file {path}: {str(exc)[:300]}"
        ) from exc
    _apply_state_dict(spec, module, state, path)


def _apply_state_dict(
    spec: ModelSpec, module: torch.nn.Module, state: Mapping[str, Any], origin: str
) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
        # Tolerated: BatchNorm counters (torchvision's detection checkpoints come from
        # FrozenBatchNorm2d, which has none) and auxiliary training heads of segmenters.
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        unexpected = [k for k in result.unexpected_keys if not k.startswith("aux_classifier.")]
        if missing or unexpected:
            raise RuntimeError(
                f"Error(s) in loading state_dict: missing keys {missing[:10]}, "
                f"unexpected keys {unexpected[:10]}"
            )
    except RuntimeError as exc:
        raise ConfigError(
            f"model {spec.name!r}: weights {origin} do not fit arch {spec.arch} with "
            f"num_classes={spec.num_classes}: {str(exc)[:500]}"
        ) from exc


def _random_init(spec: ModelSpec, why: str) -> WeightsSource:
    logger.warning(_RANDOM_WARNING, spec.name, why)
    return WeightsSource("random", "")


def _load_torchvision(
    spec: ModelSpec, source: WeightsSource, *, weights_dir: Path | None, allow_random: bool
) -> tuple[torch.nn.Module, WeightsSource]:
    builder = _builder(spec)
    extra: dict[str, Any] = {}
    if "weights_backbone" in inspect.signature(builder).parameters:
        # Detectors and segmenters would otherwise fetch ImageNet backbone weights that the
        # full state dict replaces anyway.
        extra["weights_backbone"] = None
    module = builder(weights=None, num_classes=spec.num_classes, **extra)
    if source.kind in ("file", "hub_cache"):
        _load_state_dict(spec, module, source.location)
    elif source.kind == "download":
        try:
            state = torch.hub.load_state_dict_from_url(
                source.location,
                map_location="cpu",
                progress=False,
                check_hash=True,
                file_name=spec.weights_filename,
                weights_only=True,
            )
        except Exception as exc:  # urllib, hash and unpickling errors all mean "no weights"
            if not allow_random:
                hub_file = torch_hub_dir() / "checkpoints" / (spec.weights_filename or "")
                raise ConfigError(
                    f"download of {source.location} failed ({exc}); "
                    + no_weights_message(spec, weights_dir=weights_dir, hub_file=hub_file)
                ) from exc
            return module, _random_init(spec, f"download of {source.location} failed: {exc}")
        _apply_state_dict(spec, module, state, source.location)
    else:
        _random_init(spec, "no weights file and VISIONQ_ALLOW_RANDOM_WEIGHTS is on")
    return module, source


def _load_archive(spec: ModelSpec, path: str, device: torch.device) -> torch.nn.Module:
    try:
        if spec.kind == "torchscript":
            # torch.jit.load has no annotations.
            module: torch.nn.Module = torch.jit.load(path, map_location=device)  # type: ignore[no-untyped-call]
        else:
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(torch.export.load(path), device)
            module = program.module()
    except Exception as exc:  # deserialisation raises many types for a bad archive
        raise ConfigError(
            f"model {spec.name!r}: cannot load {spec.kind} archive {path}: {str(exc)[:300]}"
        ) from exc
    return module


def _check_archive_outputs(spec: ModelSpec, loaded: LoadedModel, device: torch.device) -> None:
    # An archive does not say how many classes it predicts; one dummy forward does.
    size = spec.preprocess.input_size
    try:
        with torch.inference_mode():
            out = loaded.module(torch.zeros(1, 3, size, size, device=device))
    except Exception as exc:  # any failure here means the archive cannot serve this input
        raise ConfigError(
            f"model {spec.name!r}: archive {spec.archive_path} fails on a float32 input "
            f"of shape (1, 3, {size}, {size}): {str(exc)[:300]}"
        ) from exc
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] != len(loaded.labels):
        raise ConfigError(
            f"model {spec.name!r}: archive {spec.archive_path} predicts {out.shape[1]} classes "
            f"but labels file {spec.labels_path} has {len(loaded.labels)} labels"
        )


def load_model(
    spec: ModelSpec,
    *,
    weights_dir: Path | None,
    allow_random: bool,
    device: torch.device,
    allow_download: bool = True,
) -> LoadedModel:
    """Build or load ``spec`` on ``device`` in eval mode; raises ConfigError saying what to do."""
    if spec.kind == "torchvision":
        _builder(spec)  # an unknown arch is the clearest error; report it first
    labels = load_labels(spec)
    source = resolve_weights(
        spec, weights_dir=weights_dir, allow_random=allow_random, allow_download=allow_download
    )
    if spec.kind == "torchvision":
        if len(labels) != spec.num_classes:
            raise ConfigError(
                f"model {spec.name!r} has num_classes={spec.num_classes} but {len(labels)} labels"
            )
        module, source = _load_torchvision(
            spec, source, weights_dir=weights_dir, allow_random=allow_random
        )
        module = module.to(device)
    else:
        module = _load_archive(spec, source.location, device)
    # Exported programs have no train/eval switch; they were traced in eval mode.
    with contextlib.suppress(NotImplementedError):
        module.eval()
    # ScriptModule refuses Module.requires_grad_, so switch the parameters one by one.
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    loaded = LoadedModel(spec=spec, module=module, labels=labels, source=source)
    if spec.kind != "torchvision":
        _check_archive_outputs(spec, loaded, device)
    logger.info(
        "loaded model %s (%s) on %s from %s %s",
        spec.name,
        spec.kind,
        device,
        source.kind,
        source.location,
    )
    return loaded
