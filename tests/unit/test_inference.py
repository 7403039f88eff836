"""Forward pass helpers: normalisation, and splitting a failing batch on item indices."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.preprocess import normalize_batch_numpy
from models.specs import BUILTIN_MODELS
from services.gpu_worker.inference import ForwardError, Normalizer, forward_split

PRE = BUILTIN_MODELS["mobilenet_v3_small"].preprocess


def test_normalizer_matches_the_numpy_reference() -> None:
    batch = np.random.default_rng(0).integers(0, 255, (3, 3, 8, 8), dtype=np.uint8)
    got = Normalizer(PRE, torch.device("cpu"), channels_last=True)(batch)
    np.testing.assert_allclose(got.numpy(), normalize_batch_numpy(batch, PRE), atol=1e-6)
    assert got.dtype == torch.float32


def _model(bad: set[int] | None = None, oom_above: int = 10**9) -> Any:
    """Items are ints; output is item * 10; raises for batches holding a bad item or too big."""
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(items) > oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        if bad and bad & set(items):
            raise RuntimeError("bad item")
        return [i * 10 for i in items]

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_one_call_for_a_good_batch() -> None:
    run = _model()
    assert forward_split(run, list(range(4))) == [0, 10, 20, 30]
    assert run.calls == [[0, 1, 2, 3]]


def test_bad_item_fails_alone() -> None:
    out = forward_split(_model(bad={5}), list(range(8)))
    failed = [i for i, t in enumerate(out) if isinstance(t, ForwardError)]
    assert failed == [5]
    assert isinstance(out[5], ForwardError) and out[5].code == "inference_error"
    assert [o for o in out if not isinstance(o, ForwardError)] == [0, 10, 20, 30, 40, 60, 70]


def test_oom_splits_down_to_a_size_that_fits() -> None:
    ooms: list[int] = []
    out = forward_split(_model(oom_above=2), list(range(8)), on_oom=lambda: ooms.append(1))
    assert out == [i * 10 for i in range(8)]
    assert len(ooms) == 3  # 8 -> 4+4 -> each 4 -> 2+2


def test_oom_of_a_single_item_is_its_error() -> None:
    out = forward_split(_model(oom_above=0), [1, 2])
    assert all(isinstance(t, ForwardError) and t.code == "out_of_memory" for t in out)


def test_wrong_number_of_outputs_is_an_error_per_item() -> None:
    out = forward_split(lambda items: [], [1])
    assert isinstance(out[0], ForwardError) and "0 outputs for 1" in out[0].message
