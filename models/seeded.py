"""A reproducible, BatchNorm-calibrated ``mobilenet_v3_small`` for tests and measurements.

Random weights with fresh BatchNorm statistics (mean 0, var 1) make a MobileNet's
activations vanish and every score 1/1000; a few seeded batches in train mode give it real
statistics, so scores differ per image and the top-k order is meaningful. The tests' fixture
(tests/conftest.py) and ``python -m models.imaging.fast_decode_check`` both build it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SEED = 1234


def seeded_classifier(seed: int = SEED) -> torch.nn.Module:
    """The calibrated ``mobilenet_v3_small`` in eval mode on the CPU (1000 classes)."""
    import torch
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(seed)
    model: torch.nn.Module = mobilenet_v3_small()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration batches
    model.train()
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 224, 224, generator=noise))
    model.eval()
    return model


def make_seeded_weights(path: Path, seed: int = SEED) -> Path:
    """Save ``seeded_classifier(seed)``'s state dict to ``path``; returns ``path``."""
    import torch

    torch.save(seeded_classifier(seed).state_dict(), path)
    return path
