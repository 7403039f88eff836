"""Weights resolution order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from models import BUILTIN_MODELS, ModelSpec, WeightsSource, resolve_weights
from models.weights import torch_hub_dir
from services.common.errors import ConfigError

SPEC = BUILTIN_MODELS["resnet18"]


@pytest.fixture(autouse=True)
def _hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


def test_hub_dir_follows_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert torch_hub_dir() == Path(torch.hub.get_dir())
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert torch_hub_dir() == tmp_path / "xdg" / "torch" / "hub" == Path(torch.hub.get_dir())
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert torch_hub_dir() == Path.home() / ".cache" / "torch" / "hub"


def test_archive(tmp_path: Path) -> None:
    archive = tmp_path / "m.pt"
    spec = dataclasses.replace(SPEC, kind="torchscript", archive_path=archive, arch=None)
    source = resolve_weights(spec, weights_dir=None, allow_random=True)
    assert source == WeightsSource("archive", str(archive))
    assert not source.is_random


def test_explicit_file_beats_everything(tmp_path: Path, _hub: Path) -> None:
    explicit = tmp_path / "explicit.pt"
    explicit.write_bytes(b"x")
    (_hub / SPEC.weights_filename).write_bytes(b"x")  # type: ignore[operator]
    spec = dataclasses.replace(SPEC, weights_path=explicit)
    source = resolve_weights(spec, weights_dir=None, allow_random=True)
    assert source == WeightsSource("file", str(explicit))


def test_explicit_file_missing_is_an_error(tmp_path: Path) -> None:
    spec = dataclasses.replace(SPEC, weights_path=tmp_path / "gone.pt")
    with pytest.raises(ConfigError, match=r"gone\.pt"):
        resolve_weights(spec, weights_dir=None, allow_random=True)


@pytest.mark.parametrize("filename", ["resnet18.pt", "resnet18.pth", "resnet18-f37072fd.pth"])
def test_weights_dir_beats_hub_cache(tmp_path: Path, _hub: Path, filename: str) -> None:
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    (weights_dir / filename).write_bytes(b"x")
    (_hub / "resnet18-f37072fd.pth").write_bytes(b"x")
    source = resolve_weights(SPEC, weights_dir=weights_dir, allow_random=False)
    assert source == WeightsSource("file", str(weights_dir / filename))


def test_hub_cache_beats_download(tmp_path: Path, _hub: Path) -> None:
    (_hub / "resnet18-f37072fd.pth").write_bytes(b"x")
    source = resolve_weights(SPEC, weights_dir=tmp_path, allow_random=False)
    assert source == WeightsSource("hub_cache", str(_hub / "resnet18-f37072fd.pth"))


def test_download_then_random(tmp_path: Path) -> None:
    source = resolve_weights(SPEC, weights_dir=tmp_path, allow_random=True)
    assert source == WeightsSource("download", SPEC.weights_url or "")
    source = resolve_weights(SPEC, weights_dir=tmp_path, allow_random=True, allow_download=False)
    assert source == WeightsSource("random", "")
    assert source.is_random


def test_nothing_found_says_what_to_do(_hub: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_weights(SPEC, weights_dir=None, allow_random=False, allow_download=False)
    message = str(info.value)
    assert str(_hub / "resnet18-f37072fd.pth") in message
    assert SPEC.weights_url is not None and SPEC.weights_url in message
    for hint in ("VISIONQ_WEIGHTS_DIR", "VISIONQ_MODELS_FILE", "VISIONQ_ALLOW_RANDOM_WEIGHTS=1"):
        assert hint in message


def test_nothing_found_with_weights_dir_names_the_files(tmp_path: Path) -> None:
    spec = ModelSpec(name="custom", kind="torchvision", preprocess=SPEC.preprocess, arch="resnet18")
    with pytest.raises(ConfigError) as info:
        resolve_weights(spec, weights_dir=tmp_path, allow_random=False)
    assert str(tmp_path / "custom.pt") in str(info.value)
