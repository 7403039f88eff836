"""Batch buckets and the runtime's wrapping of a handler, on the CPU."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch

from models.handlers import Handler, HandlerOptions
from models.handlers.classification import ClassificationHandler
from models.handlers.params import ClassificationParams
from models.specs import BUILTIN_MODELS, ModelSpec
from services.common.settings import WorkerSettings
from services.gpu_worker.inference import bucket_sizes, bucketed
from services.gpu_worker.serving import wrap_handler

SPEC = BUILTIN_MODELS["mobilenet_v3_small"]


@pytest.mark.parametrize(
    ("limit", "expected"), [(1, [1]), (12, [1, 2, 4, 8, 12]), (16, [1, 2, 4, 8, 16])]
)
def test_bucket_sizes(limit: int, expected: list[int]) -> None:
    assert bucket_sizes(limit) == expected


def test_bucketed_pads_to_fixed_sizes_and_drops_padding() -> None:
    seen: list[int] = []

    def run(items: list[Any]) -> list[Any]:
        seen.append(len(items))
        return [i * 2 for i in items]

    assert bucketed(run, 16)([1, 2, 3, 4, 5]) == [2, 4, 6, 8, 10]
    assert seen == [8]


class _Tiny(ClassificationHandler):
    """A classification handler on a tiny module, so no weights are needed."""

    def setup(self, device: torch.device, spec: ModelSpec) -> None:
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                     torch.nn.Linear(3, 4)).eval()  # fmt: skip
        self.labels = ["a", "b", "c", "d"]
        self.spec = spec
        self.device = device
        self.module = module
        from models.handlers.tensors import Normalizer

        self.normalize = Normalizer(spec.preprocess, device, False)
        self._decode = self._decode_cpu
        self._stack = np.stack


def _served(settings: WorkerSettings) -> Any:
    handler = _Tiny(HandlerOptions())
    handler.setup(torch.device("cpu"), SPEC)
    return wrap_handler(handler, SPEC, settings, torch.device("cpu"))


def test_buckets_agree_with_plain() -> None:
    plain = _served(WorkerSettings(max_batch_size=8))
    padded = _served(WorkerSettings(max_batch_size=8, batch_buckets=True))
    items = list(np.random.default_rng(0).integers(0, 255, (3, 3, 224, 224), dtype=np.uint8))
    for a, b in zip(plain.forward(items), padded.forward(items), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    params = ClassificationParams(top_k=2)
    top = plain.handler.encode(plain.forward(items[:1])[0], params)["top_k"]
    assert [t["label"] for t in top] != [] and len(top) == 2


def test_gpu_decode_without_cuda_falls_back_to_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    handler = ClassificationHandler(HandlerOptions(gpu_decode=True, allow_random_weights=True))
    with caplog.at_level(logging.WARNING):
        handler.setup(torch.device("cpu"), SPEC)
    assert "needs CUDA" in caplog.text
    assert handler._stack is np.stack


def test_a_handler_is_warmed_up_once_at_wrap_time() -> None:
    calls: list[int] = []

    class Counting(Handler):
        def setup(self, device: Any, spec: ModelSpec) -> None:
            pass

        def decode(self, data: bytes, params: Any) -> int:
            return len(data)

        def predict(self, batch: list[int]) -> list[int]:
            calls.append(len(batch))
            return batch

        def encode(self, item_output: int, params: Any) -> dict[str, Any]:
            return {"n": item_output}

    served = wrap_handler(Counting(), SPEC, WorkerSettings(), torch.device("cpu"))
    assert calls == [1]
    assert served.forward([3, 4]) == [3, 4]
