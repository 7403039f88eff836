"""Device pinning and precision flags (CUDA itself is exercised in tests/gpu)."""

from __future__ import annotations

import pytest
import torch

from services.gpu_worker.device import (
    DevicePlan,
    autocast_kwargs,
    default_threads,
    pin_device,
    resolve_device,
)


def test_cuda_n_pins_that_gpu_and_uses_cuda0() -> None:
    env: dict[str, str] = {}
    plan = pin_device("cuda:2", env)
    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    assert plan == DevicePlan("cuda:2", "cuda:0")


def test_supervisor_pinning_is_kept() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "3"}
    assert pin_device("cuda:3", env).torch_device == "cuda:0"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"


def test_one_of_several_visible_gpus_is_kept() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6"}
    pin_device("cuda:1", env)
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    with pytest.raises(ValueError):
        pin_device("cuda:7", {"CUDA_VISIBLE_DEVICES": "4,5"})


def test_cpu_hides_gpus() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    assert pin_device("cpu", env) == DevicePlan("cpu", "cpu")
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_auto_resolves_inside_the_worker() -> None:
    device, label = resolve_device(DevicePlan("auto", "auto"))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.type == expected
    assert label.startswith(expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device(DevicePlan("cuda:0", "cuda:0"))


def test_autocast_only_on_cuda() -> None:
    assert autocast_kwargs("cpu", "float16") is None
    assert autocast_kwargs("cuda", "float16") == {"device_type": "cuda", "dtype": torch.float16}
    assert autocast_kwargs("cuda", "bfloat16") == {"device_type": "cuda", "dtype": torch.bfloat16}


def test_threads_leave_a_core_for_decoding_on_cpu() -> None:
    assert default_threads("cpu", 2) == (1, 1)
    assert default_threads("cpu", 8) == (7, 7)
    assert default_threads("cuda", 8) == (1, 8)
    assert default_threads("cpu", None) == (1, 1)


def test_default_threads_are_bounded_on_a_big_node() -> None:
    # A pod with CPU requests and no limit sees the node's 128 cores and no quota.
    torch_threads, decode_threads = default_threads("cuda", 128)
    assert decode_threads <= 16 and torch_threads == 1
    assert max(default_threads("cpu", 128)) <= 16
