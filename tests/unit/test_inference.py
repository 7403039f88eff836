"""Forward pass helpers: normalisation, top-k, and splitting a failing batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.preprocess import normalize_batch_numpy
from models.specs import BUILTIN_MODELS
from services.gpu_worker.inference import (
    ForwardError,
    Normalizer,
    TopK,
    forward_topk,
    label_topk,
)

PRE = BUILTIN_MODELS["mobilenet_v3_small"].preprocess


def _batch(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, 3, 8, 8), dtype=np.uint8)


def test_normalizer_matches_the_numpy_reference() -> None:
    batch = _batch(3)
    got = Normalizer(PRE, torch.device("cpu"), channels_last=True)(batch)
    np.testing.assert_allclose(got.numpy(), normalize_batch_numpy(batch, PRE), atol=1e-6)
    assert got.dtype == torch.float32


def _model(bad_rows: set[int] | None = None, oom_above: int = 10**9) -> object:
    """Logits = row id one-hot; raises for batches holding a bad row, or above a size."""

    def run(batch: np.ndarray) -> torch.Tensor:
        ids = batch[:, 0, 0, 0].astype(int).tolist()
        if len(ids) > oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        if bad_rows and bad_rows & set(ids):
            raise RuntimeError("bad row")
        logits = torch.zeros(len(ids), 10)
        for r, i in enumerate(ids):
            logits[r, i % 10] = 5.0
        return logits

    return run


def _ids(n: int) -> np.ndarray:
    batch = np.zeros((n, 3, 1, 1), dtype=np.uint8)
    batch[:, 0, 0, 0] = np.arange(n)
    return batch


def test_topk_per_row() -> None:
    out = forward_topk(_model(), _ids(4), 3)  # type: ignore[arg-type]
    assert [t.indices[0] for t in out if isinstance(t, TopK)] == [0, 1, 2, 3]
    assert all(isinstance(t, TopK) and len(t.scores) == 3 for t in out)


def test_bad_item_fails_alone() -> None:
    out = forward_topk(_model(bad_rows={5}), _ids(8), 2)  # type: ignore[arg-type]
    failed = [i for i, t in enumerate(out) if isinstance(t, ForwardError)]
    assert failed == [5]
    assert isinstance(out[5], ForwardError) and out[5].code == "inference_error"


def test_oom_splits_down_to_a_size_that_fits() -> None:
    ooms: list[int] = []
    out = forward_topk(_model(oom_above=2), _ids(8), 1, on_oom=lambda: ooms.append(1))  # type: ignore[arg-type]
    assert all(isinstance(t, TopK) for t in out)
    assert [t.indices[0] for t in out if isinstance(t, TopK)] == list(range(8))
    assert len(ooms) == 3  # 8 -> 4+4 -> each 4 -> 2+2


def test_oom_of_a_single_image_is_its_error() -> None:
    out = forward_topk(_model(oom_above=0), _ids(2), 1)  # type: ignore[arg-type]
    assert all(isinstance(t, ForwardError) and t.code == "out_of_memory" for t in out)


def test_label_topk_cuts_to_k() -> None:
    entries = label_topk(TopK([2, 0, 1], [0.5, 0.3, 0.2]), ["a", "b", "c"], 2)
    assert entries == [
        {"label": "c", "index": 2, "score": 0.5},
        {"label": "a", "index": 0, "score": 0.3},
    ]


@pytest.mark.parametrize("k", [1, 5, 20])
def test_k_larger_than_classes_is_clamped(k: int) -> None:
    out = forward_topk(_model(), _ids(2), k)  # type: ignore[arg-type]
    assert all(isinstance(t, TopK) and len(t.indices) == min(k, 10) for t in out)
