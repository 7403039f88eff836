"""A handler result that JSON cannot carry fails its own job, not the batch or the worker."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from services.gpu_worker.batch_result import _encode
from services.gpu_worker.inference import ForwardError


@pytest.mark.parametrize(
    "value",
    [np.float32(0.5), b"\x00\xff", math.nan, math.inf, {1, 2}],
    ids=["numpy-scalar", "bytes", "nan", "inf", "set"],
)
def test_a_result_json_cannot_carry_fails_that_item(value: Any) -> None:
    outcome = _encode(lambda output, params: {"v": value}, object(), None)
    assert isinstance(outcome, ForwardError)
    assert outcome.code == "inference_error"
    assert "not JSON" in outcome.message


def test_a_json_result_passes_unchanged() -> None:
    result = {"v": [0.25, 1], "label": "cat", "none": None}
    assert _encode(lambda output, params: result, object(), None) == result
