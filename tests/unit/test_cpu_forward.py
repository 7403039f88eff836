"""The CPU forward path: BatchNorm folded into convolutions, channels_last batches."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from models.handlers.tensors import Normalizer, fold_batchnorm, prepare_module
from models.seeded import seeded_classifier
from models.specs import BUILTIN_MODELS

PRE = BUILTIN_MODELS["mobilenet_v3_small"].preprocess
CPU = torch.device("cpu")


def _batch(n: int, seed: int) -> torch.Tensor:
    """Inputs drawn like the seeded model's calibration batches, so its top-1 varies."""
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _batchnorms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


def test_folded_classifier_agrees_with_the_loaded_one() -> None:
    reference = seeded_classifier()
    assert _batchnorms(reference) > 30
    prepared = prepare_module(
        seeded_classifier(), CPU, channels_last=True, compile=False, fold=True
    )
    assert _batchnorms(prepared) == 0
    x = _batch(48, seed=7)
    with torch.inference_mode():
        want = reference(x).softmax(1)
        got = prepared(x.contiguous(memory_format=torch.channels_last)).softmax(1)
    # The calibrated model's scores differ per image (else agreement would prove nothing).
    assert len(set(want.argmax(1).tolist())) > 5
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert (got - want).abs().max().item() < 1e-5


def test_unfolded_when_not_asked_or_not_on_the_cpu() -> None:
    kept = prepare_module(seeded_classifier(), CPU, channels_last=False, compile=False)
    assert _batchnorms(kept) > 30
    # (No CUDA call is made: no half weights, no channels_last.)
    on_cuda = prepare_module(
        seeded_classifier(), torch.device("cuda"), channels_last=False, compile=False, fold=True
    )
    assert _batchnorms(on_cuda) > 30


class _Branchy(torch.nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it (as in detectors)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            return y
        return -y


def test_a_module_fx_cannot_follow_is_left_as_it_was(caplog: pytest.LogCaptureFixture) -> None:
    module = _Branchy().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        want = module(x)
    with caplog.at_level(logging.INFO):
        same, folded = fold_batchnorm(module)
    assert same is module and folded == 0
    assert "BatchNorm not folded" in caplog.text
    with torch.inference_mode():
        assert torch.equal(same(x), want)


def test_a_module_in_training_mode_is_not_folded() -> None:
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    same, folded = fold_batchnorm(module)
    assert same is module and folded == 0


def test_cpu_batches_are_channels_last_and_unchanged_in_value() -> None:
    batch = np.random.default_rng(1).integers(0, 255, (4, 3, 16, 16), dtype=np.uint8)
    nhwc = Normalizer(PRE, CPU, channels_last=True)(batch)
    nchw = Normalizer(PRE, CPU, channels_last=False)(batch)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nhwc, nchw)
