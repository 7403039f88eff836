"""Built-in model specs and the models file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torchvision
from torchvision.transforms import InterpolationMode

from models import BUILTIN_MODELS, load_registry
from models.specs import IMAGENET_MEAN, IMAGENET_STD, Preprocess, read_labels_file
from services.common.errors import ConfigError

REQUIRED = {
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
}


def test_builtins_cover_the_documented_models() -> None:
    assert set(BUILTIN_MODELS) >= REQUIRED


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_builtin_matches_torchvision_metadata(name: str) -> None:
    spec = BUILTIN_MODELS[name]
    assert spec.arch is not None
    weights = torchvision.models.get_model_weights(spec.arch).DEFAULT
    transforms = weights.transforms()
    assert spec.kind == "torchvision"
    assert spec.weights_enum == str(weights)
    assert spec.weights_url == weights.url
    assert spec.weights_filename == weights.url.rsplit("/", 1)[1]
    assert spec.num_classes == len(weights.meta["categories"])
    pre = spec.preprocess
    assert [pre.input_size] == transforms.crop_size
    assert [pre.resize_size] == transforms.resize_size
    assert InterpolationMode(pre.interpolation) == transforms.interpolation
    assert list(pre.mean) == pytest.approx(transforms.mean)
    assert list(pre.std) == pytest.approx(transforms.std)


def test_torch_free_modules_do_not_import_torch() -> None:
    code = (
        "import sys, models, models.specs, models.weights, models.models_file, "
        "models.preprocess; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'torchvision' not in sys.modules, 'torchvision imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_models_file_gives_builtins() -> None:
    assert load_registry(None) == BUILTIN_MODELS


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_good_models_file_resolves_relative_paths(tmp_path: Path) -> None:
    sub = tmp_path / "assets"
    sub.mkdir()
    (sub / "small.pt").write_bytes(b"x")
    (sub / "tiny.pt").write_bytes(b"x")
    (sub / "tiny.pt2").write_bytes(b"x")
    (sub / "labels.txt").write_text("cat\ndog\n\nbird\n")
    (tmp_path / "labels.json").write_text('["a", "b"]')
    (tmp_path / "r50.pth").write_bytes(b"x")
    models_file = _write(
        tmp_path,
        """
[[models]]
name = "my_resnet"
arch = "resnet18"
weights = "assets/small.pt"
labels = "assets/labels.txt"

[[models]]
name = "tiny"
torchscript = "assets/tiny.pt"
labels = "labels.json"
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
interpolation = "bicubic"

[[models]]
name = "tiny.export"
export = "assets/tiny.pt2"
labels = "assets/labels.txt"
input_size = 96
resize_size = 100

[[models]]
name = "resnet50"
arch = "resnet50"
weights = "r50.pth"
""",
    )
    registry = load_registry(models_file)
    assert set(registry) == set(BUILTIN_MODELS) | {"my_resnet", "tiny", "tiny.export"}

    mine = registry["my_resnet"]
    assert mine.kind == "torchvision"
    assert mine.weights_path == sub / "small.pt"
    assert mine.labels_path == sub / "labels.txt"
    assert mine.num_classes == 3
    assert mine.preprocess == BUILTIN_MODELS["resnet18"].preprocess

    tiny = registry["tiny"]
    assert tiny.kind == "torchscript"
    assert tiny.archive_path == sub / "tiny.pt"
    assert tiny.num_classes == 2
    assert tiny.preprocess == Preprocess(64, 73, "bicubic", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    exported = registry["tiny.export"]
    assert exported.kind == "export"
    assert exported.preprocess == Preprocess(96, 100, "bilinear", IMAGENET_MEAN, IMAGENET_STD)

    override = registry["resnet50"]
    assert override.weights_path == tmp_path / "r50.pth"
    assert override.preprocess == BUILTIN_MODELS["resnet50"].preprocess
    assert override.num_classes == 1000


BAD_FILES = [
    ("[[models]\nname=", ["not valid TOML"]),
    ('title = "x"', ["unknown top-level key", "title"]),
    ('models = "x"', ["array of tables"]),
    ('[[models]]\narch = "resnet18"\nweights = "w.pt"', ["models[0]", "name is required"]),
    ('[[models]]\nname = "Bad Name"\narch = "resnet18"', ["'Bad Name'", "lowercase"]),
    ('[[models]]\nname = "m"\nlabels = "labels.txt"', ["exactly one of arch"]),
    (
        '[[models]]\nname = "m"\narch = "resnet18"\ntorchscript = "w.pt"',
        ["exactly one of", "arch, torchscript"],
    ),
    ('[[models]]\nname = "m"\narch = "resnet18"\nweights = "w.pt"\ncolour = 1', ["colour"]),
    ('[[models]]\nname = "m"\narch = "resnet18"', ["'m'", "weights", "required"]),
    ('[[models]]\nname = "m"\narch = "resnet18"\nweights = "nope.pt"', ["'m'", "nope.pt"]),
    ('[[models]]\nname = "m"\narch = "res net"\nweights = "w.pt"', ["arch must be"]),
    (
        '[[models]]\nname = "m"\narch = "resnet18"\nweights = "w.pt"\nnum_classes = 10',
        ["num_classes = 10", "labels"],
    ),
    (
        '[[models]]\nname = "m"\narch = "resnet18"\nweights = "w.pt"\nnum_classes = 0',
        ["num_classes must be a positive integer"],
    ),
    (
        '[[models]]\nname = "m"\narch = "resnet18"\nweights = "w.pt"\n'
        'labels = "labels.txt"\nnum_classes = 5',
        ["num_classes = 5", "3 labels"],
    ),
    ('[[models]]\nname = "m"\ntorchscript = "w.pt"\ninput_size = 32', ["labels", "required"]),
    ('[[models]]\nname = "m"\ntorchscript = "w.pt"\nlabels = "labels.txt"', ["input_size"]),
    (
        '[[models]]\nname = "m"\ntorchscript = "missing.pt"\nlabels = "labels.txt"\n'
        "input_size = 32",
        ["'m'", "missing.pt", "does not exist"],
    ),
    (
        '[[models]]\nname = "m"\nexport = "w.pt"\nlabels = "nolabels.txt"\ninput_size = 32',
        ["nolabels.txt"],
    ),
    (
        '[[models]]\nname = "m"\ntorchscript = "w.pt"\nlabels = "labels.txt"\n'
        'input_size = 32\nweights = "w.pt"',
        ["weights is only for arch"],
    ),
    (
        '[[models]]\nname = "m"\ntorchscript = "w.pt"\nlabels = "labels.txt"\n'
        'input_size = 32\ninterpolation = "nearest"',
        ["interpolation"],
    ),
    (
        '[[models]]\nname = "m"\ntorchscript = "w.pt"\nlabels = "labels.txt"\n'
        "input_size = 32\nmean = [0.5, 0.5]",
        ["mean must be a list of three numbers"],
    ),
    (
        '[[models]]\nname = "m"\ntorchscript = "w.pt"\nlabels = "labels.txt"\n'
        "input_size = 32\nstd = [0.5, 0, 0.5]",
        ["std values must be positive"],
    ),
    (
        '[[models]]\nname = "m"\ntorchscript = "w.pt"\nlabels = "labels.txt"\n'
        "input_size = 64\nresize_size = 60",
        ["resize_size (60) must be at least input_size (64)"],
    ),
    (
        '[[models]]\nname = "m"\narch = "resnet18"\nweights = "w.pt"\n'
        '[[models]]\nname = "m"\narch = "resnet18"\nweights = "w.pt"',
        ["'m' is declared twice"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_models_file_says_what_is_wrong(tmp_path: Path, text: str, expected: list[str]) -> None:
    (tmp_path / "w.pt").write_bytes(b"x")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    models_file = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_registry(models_file)
    message = str(info.value)
    assert str(models_file) in message
    for part in expected:
        assert part in message


def test_missing_models_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read models file"):
        load_registry(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "holds no labels"), ("[1, 2]", "JSON list of strings"), ("[oops", "not valid JSON")],
)
def test_bad_labels_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_labels_file(path)
