"""Where a model's weights come from, decided without importing torch."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.specs import ModelSpec
from services.common.errors import ConfigError

logger = logging.getLogger(__name__)

WeightsKind = Literal["file", "hub_cache", "download", "random", "archive", "none"]


@dataclass(frozen=True)
class WeightsSource:
    """The chosen origin of a model's weights: a path, a URL, or random initialisation."""

    kind: WeightsKind
    location: str

    @property
    def is_random(self) -> bool:
        """True when the model gets random weights (its predictions mean nothing)."""
        return self.kind == "random"


def torch_hub_dir() -> Path:
    """The torch hub folder, found exactly as ``torch.hub.get_dir()`` finds it by default."""
    # TORCH_HOME and XDG_CACHE_HOME are torch's own settings, not visionq's.
    torch_home = os.getenv("TORCH_HOME")
    if torch_home is None:
        cache = os.getenv("XDG_CACHE_HOME", "~/.cache")
        torch_home = os.path.join(cache, "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


def _weights_dir_candidates(spec: ModelSpec, weights_dir: Path) -> list[Path]:
    names = [f"{spec.name}.pt", f"{spec.name}.pth"]
    if spec.weights_filename:
        names.append(spec.weights_filename)
    return [weights_dir / name for name in names]


def resolve_weights(
    spec: ModelSpec,
    *,
    weights_dir: Path | None,
    allow_random: bool,
    allow_download: bool = True,
) -> WeightsSource:
    """Pick the weights of ``spec``: archive, explicit file, weights dir, hub cache, URL, random."""
    if spec.kind in ("torchscript", "export"):
        if spec.archive_path is None:
            raise ConfigError(f"model {spec.name!r}: a {spec.kind} model needs an archive path")
        return WeightsSource("archive", str(spec.archive_path))
    if spec.kind == "none" and spec.weights_path is None:
        # No model file at all (noop, or a custom handler that loads its own).
        return WeightsSource("none", "")
    if spec.weights_path is not None:
        if not spec.weights_path.is_file():
            raise ConfigError(f"model {spec.name!r}: weights file {spec.weights_path} is missing")
        return WeightsSource("file", str(spec.weights_path))
    if weights_dir is not None:
        for candidate in _weights_dir_candidates(spec, weights_dir):
            if candidate.is_file():
                return WeightsSource("file", str(candidate))
    hub_file = None
    if spec.weights_filename:
        hub_file = torch_hub_dir() / "checkpoints" / spec.weights_filename
        if hub_file.is_file():
            return WeightsSource("hub_cache", str(hub_file))
    if spec.weights_url and allow_download:
        return WeightsSource("download", spec.weights_url)
    if allow_random:
        return WeightsSource("random", "")
    raise ConfigError(no_weights_message(spec, weights_dir=weights_dir, hub_file=hub_file))


def no_weights_message(spec: ModelSpec, *, weights_dir: Path | None, hub_file: Path | None) -> str:
    """A message telling the operator every way to give ``spec`` its weights."""
    places = []
    if hub_file is not None:
        url = f" (from {spec.weights_url})" if spec.weights_url else ""
        places.append(f"put the checkpoint at {hub_file}{url}")
    if weights_dir is not None:
        wanted = " or ".join(str(p) for p in _weights_dir_candidates(spec, weights_dir))
        places.append(f"put a state dict at {wanted}")
    else:
        places.append(
            f"set VISIONQ_WEIGHTS_DIR to a folder holding {spec.name}.pt"
            + (f" or {spec.weights_filename}" if spec.weights_filename else "")
        )
    places.append("declare the model with weights = <file> in VISIONQ_MODELS_FILE")
    places.append("or, for tests and benchmarks only, set VISIONQ_ALLOW_RANDOM_WEIGHTS=1")
    return f"no weights found for model {spec.name!r}: " + "; ".join(places)
