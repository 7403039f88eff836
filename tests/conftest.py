"""Shared fixtures: seeded model weights and a models file that declares them."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.seeded import make_seeded_weights

TEST_MODEL = "mobilenet_v3_small"
# Served by the API but consumed by no worker in the shared stack: its jobs stay queued.
IDLE_MODEL = "idle_model"
# A custom TorchScript classifier declared in the models file, with its own labels.
TINY_MODEL = "tiny"
TINY_LABELS = [f"shape_{i}" for i in range(10)]


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the seeded state dict."""
    return make_seeded_weights(tmp_path_factory.mktemp("weights") / "mnv3s-seeded.pt")


def make_tiny_torchscript(path: Path, seed: int = 7) -> Path:
    """A small seeded conv net (64x64 in, 10 classes out) saved as TorchScript."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()
    torch.jit.save(torch.jit.script(net), str(path))
    return path


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory, seeded_weights: Path) -> Path:
    """A models file: the built-in name on seeded weights, an idle copy, a TorchScript model."""
    folder = tmp_path_factory.mktemp("models")
    make_tiny_torchscript(folder / "tiny.pt")
    (folder / "tiny_labels.txt").write_text("\n".join(TINY_LABELS) + "\n")
    path = folder / "models.toml"
    path.write_text(
        f'[[models]]\nname = "{TEST_MODEL}"\narch = "mobilenet_v3_small"\n'
        f'weights = "{seeded_weights}"\n\n'
        f'[[models]]\nname = "{IDLE_MODEL}"\narch = "mobilenet_v3_small"\n'
        f'weights = "{seeded_weights}"\n\n'
        f'[[models]]\nname = "{TINY_MODEL}"\ntorchscript = "tiny.pt"\n'
        'labels = "tiny_labels.txt"\ninput_size = 64\n'
    )
    return path


def calibrate_batchnorm(model: object, inputs: object, seed: int) -> None:
    """Fit every BatchNorm's statistics on seeded noise with the model in eval mode.

    Only the BatchNorm layers are switched to training, so detectors and segmenters run
    their inference path (no targets needed) while the statistics are fitted; a fresh
    model's statistics (mean 0, var 1) would make its activations vanish.
    """
    import torch

    assert isinstance(model, torch.nn.Module)
    torch.manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = None
    model.eval()
    for norm in norms:
        norm.train()
    with torch.no_grad():
        model(inputs)
    model.eval()


def make_seeded_detector(path: Path, seed: int = 4321) -> Path:
    """A reproducible ssdlite320_mobilenet_v3_large state dict whose detections vary."""
    import torch
    from torchvision.models import get_model

    torch.manual_seed(seed)
    model = get_model(
        "ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=91
    )
    noise = torch.Generator().manual_seed(seed)
    calibrate_batchnorm(model, list(torch.rand(4, 3, 320, 320, generator=noise)), seed)
    with torch.no_grad():
        # Sharpen the class scores: a flat softmax puts every class of every anchor above
        # the detector's 0.001 floor (slow NMS, and scores that all tie near 1/91).
        for head in model.head.classification_head.module_list:
            head[-1].weight.mul_(5.0)
            head[-1].bias.mul_(5.0)
    torch.save(model.state_dict(), path)
    return path


def make_seeded_segmenter(path: Path, seed: int = 5678) -> Path:
    """A reproducible lraspp_mobilenet_v3_large state dict whose class maps vary."""
    import torch
    from torchvision.models import get_model

    torch.manual_seed(seed)
    model = get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=21
    )
    noise = torch.Generator().manual_seed(seed)
    calibrate_batchnorm(model, torch.rand(4, 3, 520, 520, generator=noise), seed)
    torch.save(model.state_dict(), path)
    return path
