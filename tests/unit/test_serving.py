"""Batch buckets and the per-model wiring, on the CPU."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from models.loader import LoadedModel
from models.specs import BUILTIN_MODELS
from models.weights import WeightsSource
from services.common.settings import WorkerSettings
from services.gpu_worker.inference import bucket_sizes, bucketed
from services.gpu_worker.serving import build_served


@pytest.mark.parametrize(
    ("limit", "expected"), [(1, [1]), (12, [1, 2, 4, 8, 12]), (16, [1, 2, 4, 8, 16])]
)
def test_bucket_sizes(limit: int, expected: list[int]) -> None:
    assert bucket_sizes(limit) == expected


def test_bucketed_pads_to_fixed_shapes_and_drops_padding() -> None:
    seen: list[int] = []

    def run(batch: np.ndarray) -> torch.Tensor:
        seen.append(len(batch))
        return torch.from_numpy(batch.reshape(len(batch), -1).astype(np.float32))

    batch = np.arange(5 * 3, dtype=np.uint8).reshape(5, 3, 1, 1)
    out = bucketed(run, 16)(batch)
    assert seen == [8]
    assert out.shape == (5, 3)
    np.testing.assert_array_equal(out.numpy(), batch.reshape(5, 3))


def _tiny_loaded() -> LoadedModel:
    spec = BUILTIN_MODELS["mobilenet_v3_small"]
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                 torch.nn.Linear(3, 4)).eval()  # fmt: skip
    return LoadedModel(spec, module, ["a", "b", "c", "d"], WeightsSource("random", ""))


def test_served_model_runs_and_buckets_agree_with_plain() -> None:
    loaded = _tiny_loaded()
    plain = build_served(loaded, WorkerSettings(max_batch_size=8), torch.device("cpu"))
    padded = build_served(
        loaded, WorkerSettings(max_batch_size=8, batch_buckets=True), torch.device("cpu")
    )
    batch = np.random.default_rng(0).integers(0, 255, (3, 3, 224, 224), dtype=np.uint8)
    np.testing.assert_allclose(plain.run(batch).numpy(), padded.run(batch).numpy(), atol=1e-6)


def test_gpu_decode_without_cuda_falls_back_to_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        served = build_served(_tiny_loaded(), WorkerSettings(gpu_decode=True), torch.device("cpu"))
    assert "needs CUDA" in caplog.text
    assert served.stack is np.stack
