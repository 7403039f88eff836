"""Loading models: state dicts, random init, TorchScript and torch.export archives."""

from __future__ import annotations

import dataclasses
import logging
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

from models import BUILTIN_MODELS, ModelSpec, Preprocess, load_registry
from models.loader import load_labels, load_model
from services.common.errors import ConfigError

CPU = torch.device("cpu")
SMALL = Preprocess(32, 37, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class Tiny(torch.nn.Module):
    """A five-class classifier small enough to script and export in a test."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


@pytest.fixture(autouse=True)
def _no_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _labels(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"class_{i}\n" for i in range(count)))
    return path


def _seeded_mobilenet(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(1234)
    reference = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    path = tmp_path / "state.pt"
    torch.save(reference.state_dict(), path)
    return reference, path


def test_state_dict_from_models_file(tmp_path: Path) -> None:
    reference, _ = _seeded_mobilenet(tmp_path)
    _labels(tmp_path, 10)
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        '[[models]]\nname = "mine"\narch = "mobilenet_v3_small"\n'
        'weights = "state.pt"\nlabels = "labels.txt"\n'
    )
    spec = load_registry(models_file)["mine"]
    loaded = load_model(spec, weights_dir=None, allow_random=False, device=CPU)
    assert loaded.source.kind == "file"
    assert loaded.labels == [f"class_{i}" for i in range(10)]
    assert not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), reference(x), rtol=0, atol=0)


def test_weights_dir_checkpoint_with_wrapped_state_dict(tmp_path: Path) -> None:
    reference, _ = _seeded_mobilenet(tmp_path)
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, weights_dir / "mine.pth")
    spec = ModelSpec(
        name="mine",
        kind="torchvision",
        preprocess=BUILTIN_MODELS["mobilenet_v3_small"].preprocess,
        arch="mobilenet_v3_small",
        labels_path=_labels(tmp_path, 10),
        num_classes=10,
    )
    loaded = load_model(spec, weights_dir=weights_dir, allow_random=False, device=CPU)
    assert loaded.source.location == str(weights_dir / "mine.pth")
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), reference(x), rtol=0, atol=0)


def test_random_init_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = dataclasses.replace(BUILTIN_MODELS["mobilenet_v3_small"], weights_url=None)
    with caplog.at_level(logging.WARNING, logger="models.loader"):
        loaded = load_model(spec, weights_dir=None, allow_random=True, device=CPU)
    assert loaded.source.is_random
    assert len(loaded.labels) == 1000 and loaded.labels[0] == "tench"
    assert "RANDOM WEIGHTS: predictions are meaningless" in caplog.text


def _fail_download(*args: Any, **kwargs: Any) -> Any:
    raise urllib.error.URLError("no network")


def test_failed_download_falls_back_to_random_only_when_allowed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _fail_download)
    spec = BUILTIN_MODELS["mobilenet_v3_small"]
    with caplog.at_level(logging.WARNING, logger="models.loader"):
        loaded = load_model(spec, weights_dir=None, allow_random=True, device=CPU)
    assert loaded.source.is_random
    assert "RANDOM WEIGHTS" in caplog.text and "no network" in caplog.text
    with pytest.raises(ConfigError) as info:
        load_model(spec, weights_dir=None, allow_random=False, device=CPU)
    message = str(info.value)
    assert "mobilenet_v3_small-047dcff4.pth" in message
    assert "VISIONQ_ALLOW_RANDOM_WEIGHTS=1" in message


def test_bad_weights_file_names_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    spec = dataclasses.replace(BUILTIN_MODELS["mobilenet_v3_small"], weights_path=bad)
    with pytest.raises(ConfigError, match=r"cannot read weights file .*bad\.pt"):
        load_model(spec, weights_dir=None, allow_random=False, device=CPU)


def test_state_dict_of_another_shape_is_refused(tmp_path: Path) -> None:
    _, path = _seeded_mobilenet(tmp_path)  # 10 classes, declared as 1000
    spec = dataclasses.replace(BUILTIN_MODELS["mobilenet_v3_small"], weights_path=path)
    with pytest.raises(ConfigError, match="do not fit arch mobilenet_v3_small"):
        load_model(spec, weights_dir=None, allow_random=False, device=CPU)


def test_labels_count_must_match_num_classes(tmp_path: Path) -> None:
    _, path = _seeded_mobilenet(tmp_path)
    spec = ModelSpec(
        name="mine",
        kind="torchvision",
        preprocess=SMALL,
        arch="mobilenet_v3_small",
        weights_path=path,
        labels_path=_labels(tmp_path, 9),
        num_classes=10,
    )
    with pytest.raises(ConfigError, match="num_classes=10 but 9 labels"):
        load_model(spec, weights_dir=None, allow_random=False, device=CPU)


def test_unknown_arch(tmp_path: Path) -> None:
    spec = ModelSpec(name="x", kind="torchvision", preprocess=SMALL, arch="resnet9000")
    with pytest.raises(ConfigError, match="'resnet9000' is not a torchvision model builder"):
        load_model(spec, weights_dir=None, allow_random=True, device=CPU)


def test_load_labels_of_builtin() -> None:
    labels = load_labels(BUILTIN_MODELS["resnet50"])
    assert len(labels) == 1000 and labels[0] == "tench"


def _archive_spec(tmp_path: Path, kind: str, archive: Path, classes: int) -> ModelSpec:
    models_file = tmp_path / "models.toml"
    _labels(tmp_path, classes)
    models_file.write_text(
        f'[[models]]\nname = "tiny"\n{kind} = "{archive.name}"\nlabels = "labels.txt"\n'
        "input_size = 32\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n"
    )
    return load_registry(models_file)["tiny"]


def test_torchscript_archive(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    archive = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(model), str(archive))
    spec = _archive_spec(tmp_path, "torchscript", archive, 5)
    loaded = load_model(spec, weights_dir=None, allow_random=False, device=CPU)
    assert loaded.source.kind == "archive"
    assert loaded.labels == [f"class_{i}" for i in range(5)]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_archive_labels_mismatch(tmp_path: Path) -> None:
    archive = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(archive))
    spec = _archive_spec(tmp_path, "torchscript", archive, 4)
    with pytest.raises(ConfigError, match="predicts 5 classes but labels file"):
        load_model(spec, weights_dir=None, allow_random=False, device=CPU)


def test_bad_archive(tmp_path: Path) -> None:
    archive = tmp_path / "tiny.pt"
    archive.write_bytes(b"garbage")
    spec = _archive_spec(tmp_path, "torchscript", archive, 5)
    with pytest.raises(ConfigError, match=r"cannot load torchscript archive .*tiny\.pt"):
        load_model(spec, weights_dir=None, allow_random=False, device=CPU)


def test_export_archive(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    archive = tmp_path / "tiny.pt2"
    torch.export.save(program, archive)
    spec = _archive_spec(tmp_path, "export", archive, 5)
    loaded = load_model(spec, weights_dir=None, allow_random=False, device=CPU)
    assert loaded.source.kind == "archive"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))
