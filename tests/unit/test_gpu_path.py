"""The CPU-visible parts of the GPU path: error classes, retry, threads, env, labels, warm-up.

Each of these decides what a worker does on a GPU node, and each is a pure function or
runs without CUDA; tests/gpu covers what needs a device.
"""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from models.specs import BUILTIN_MODELS
from services.cli.supervisor import worker_spec
from services.gpu_worker.cuda_errors import is_device_fault, is_oom
from services.gpu_worker.device import (
    DevicePlan,
    available_cpus,
    cuda_env,
    device_label,
    pin_device,
)
from services.gpu_worker.gpu_stats import nvml_uuid_candidates
from services.gpu_worker.inference import DeviceFault, ForwardError, forward_split
from services.gpu_worker.prepare import WorkItem, build_prepared
from services.gpu_worker.serving import warmup_sizes
from services.gpu_worker.store import Claim

STICKY = [
    "CUDA error: an illegal memory access was encountered",
    "CUDA error: device-side assert triggered",
    "CUDA error: unspecified launch failure",
    "CUDA error: uncorrectable ECC error encountered",
    "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED",
    "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx`",
]


@pytest.mark.parametrize("message", STICKY)
def test_sticky_cuda_errors_are_device_faults(message: str) -> None:
    assert is_device_fault(RuntimeError(message))


def test_accelerator_error_type_is_a_device_fault() -> None:
    error_type = getattr(torch, "AcceleratorError", None)
    if error_type is None:
        pytest.skip("this torch has no AcceleratorError")
    assert is_device_fault(error_type("CUDA error: misaligned address"))


@pytest.mark.parametrize(
    "exc",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"),
        ValueError("CUDA error: not a RuntimeError"),
        RuntimeError("bad item"),
    ],
)
def test_oom_and_input_errors_are_not_device_faults(exc: BaseException) -> None:
    assert not is_device_fault(exc)


def test_oom_recognised_by_type_and_message() -> None:
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory"))
    assert not is_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_a_sticky_cuda_error_ends_the_batch_instead_of_failing_items() -> None:
    calls: list[int] = []

    def run(items: list[int]) -> list[int]:
        calls.append(len(items))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(DeviceFault, match="illegal memory access"):
        forward_split(run, list(range(8)))
    assert calls == [8]  # no split, no per-item inference_error from a broken context


def test_oom_retry_runs_after_the_failed_forward_is_released() -> None:
    """The retry must not run inside the except block (its traceback pins the activations)."""

    class Activations:
        pass

    seen: list[tuple[bool, bool]] = []
    held: list[weakref.ref[Activations]] = []

    def run(items: list[int]) -> list[int]:
        gc.collect()
        # What the retry sees: is an exception being handled, and is the last failed
        # forward's "activation" still alive?
        seen.append((sys.exc_info()[0] is not None, any(ref() is not None for ref in held)))
        if len(items) > 2:
            activations = Activations()
            held.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return [i * 10 for i in items]

    ooms: list[int] = []
    out = forward_split(run, list(range(8)), on_oom=lambda: ooms.append(1))
    assert out == [i * 10 for i in range(8)]
    assert len(ooms) == 3
    assert seen[0] == (False, False)
    assert all(state == (False, False) for state in seen[1:]), seen


def test_a_single_item_oom_is_still_its_own_error() -> None:
    def run(items: list[int]) -> list[int]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    (out,) = forward_split(run, [1])
    assert isinstance(out, ForwardError) and out.code == "out_of_memory"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_available_cpus_follows_the_cgroup_v2_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(192)))
    monkeypatch.setattr("os.cpu_count", lambda: 192)
    _write(tmp_path / "cpu.max", "200000 100000\n")
    assert available_cpus(tmp_path) == 2
    _write(tmp_path / "cpu.max", "150000 100000\n")
    assert available_cpus(tmp_path) == 2  # 1.5 CPUs: round up
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert available_cpus(tmp_path) == 192


def test_available_cpus_follows_cgroup_v1_and_affinity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("os.cpu_count", lambda: 192)
    assert available_cpus(tmp_path) == 4  # no cgroup files: the affinity mask
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "300000\n")
    _write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert available_cpus(tmp_path) == 3
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    assert available_cpus(tmp_path) == 4


def test_cuda_env_sets_pci_order_and_expandable_segments_unless_set() -> None:
    env: dict[str, str] = {}
    cuda_env(env)
    assert env == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    mine = {
        "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128",
        "CUDA_DEVICE_ORDER": "FASTEST_FIRST",
    }
    cuda_env(mine)
    assert mine["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    assert mine["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
    other = {"PYTORCH_ALLOC_CONF": "garbage_collection_threshold:0.8"}
    cuda_env(other)
    assert "PYTORCH_CUDA_ALLOC_CONF" not in other


def test_pinning_a_gpu_sets_the_cuda_env_and_the_cpu_does_not() -> None:
    env: dict[str, str] = {}
    pin_device("cuda:1", env)
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "expandable_segments:True" in env["PYTORCH_CUDA_ALLOC_CONF"]
    cpu_env: dict[str, str] = {}
    pin_device("cpu", cpu_env)
    assert "CUDA_DEVICE_ORDER" not in cpu_env


@pytest.mark.parametrize(
    ("setting", "visible", "label"),
    [
        (
            "cuda:0",
            "GPU-8e2c1a55-0f1b-4c2e-9d7a-3b1e2f4a5c6d",
            "cuda:GPU-8e2c1a55-0f1b-4c2e-9d7a-3b1e2f4a5c6d",
        ),
        (
            "cuda",
            "MIG-4b7e2d10-aa11-5c3f-8e9d-0123456789ab",
            "cuda:MIG-4b7e2d10-aa11-5c3f-8e9d-0123456789ab",
        ),
        ("cuda:3", "3", "cuda:3"),
        ("cuda", None, "cuda:0"),
    ],
)
def test_uuid_pinned_workers_are_labelled_by_their_uuid(
    setting: str, visible: str | None, label: str
) -> None:
    assert device_label(setting, visible) == label
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert pin_device(setting, env) == DevicePlan(label, "cuda:0")


def test_two_uuid_pinned_workers_get_two_labels() -> None:
    labels = set()
    for gpu in ("GPU-aaaa-1111", "GPU-bbbb-2222"):
        spec = worker_spec(0, gpu)
        env = {"CUDA_VISIBLE_DEVICES": spec.env["CUDA_VISIBLE_DEVICES"]}
        labels.add(pin_device(spec.argv[spec.argv.index("--device") + 1], env).label)
    assert labels == {"cuda:GPU-aaaa-1111", "cuda:GPU-bbbb-2222"}


def test_supervisor_runs_gpu_workers_in_pci_order() -> None:
    assert worker_spec(1, "1").env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert worker_spec(1, "GPU-ab").env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "CUDA_DEVICE_ORDER" not in worker_spec(1, None).env


def test_nvml_uuid_candidates_know_mig_and_the_pinned_uuid() -> None:
    assert nvml_uuid_candidates("1234-ab", None) == ["GPU-1234-ab", "MIG-1234-ab"]
    assert nvml_uuid_candidates("1234-ab", "MIG-77-cd") == [
        "MIG-77-cd",
        "GPU-1234-ab",
        "MIG-1234-ab",
    ]
    assert nvml_uuid_candidates("GPU-1234-ab", "0,1") == ["GPU-1234-ab"]


def test_every_bucket_is_warmed_on_cuda() -> None:
    assert warmup_sizes("cuda", 64, buckets=True) == [1, 2, 4, 8, 16, 32, 64]
    assert warmup_sizes("cuda", 24, buckets=True) == [1, 2, 4, 8, 16, 24]
    assert warmup_sizes("cuda", 4, buckets=False) == [1, 2, 3, 4]
    assert warmup_sizes("cpu", 64, buckets=True) == [1]
    # Compiled, the CPU specialises to shapes too: a live batch of a new bucket would
    # compile under the batch watchdog.
    assert warmup_sizes("cpu", 16, buckets=True, compiled=True) == [1, 2, 4, 8, 16]


class _NoParams(BaseModel):
    pass


def _claim() -> Any:
    return Claim(verdict="run", deliveries=1, created=None, params="", image=b"jpeg")


def test_an_oom_while_decoding_on_the_gpu_is_not_an_invalid_image() -> None:
    def decode(data: bytes, params: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory while resizing (test)")

    prepared, _ = build_prepared(
        "m", [WorkItem("j1", "m")], [_claim()], decode, _NoParams, None, 0.0
    )
    ((_, outcome),) = prepared.ended
    assert outcome.error is not None and outcome.error["code"] == "out_of_memory"


def test_half_weights_keep_norms_and_the_head_in_float32() -> None:
    from torchvision.models import mobilenet_v3_small

    from models.handlers.tensors import Fp32Head, half_weights, prepare_module

    module = half_weights(mobilenet_v3_small().eval(), torch.bfloat16)
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    heads = [m for m in module.modules() if isinstance(m, Fp32Head)]
    assert all(c.weight.dtype == torch.bfloat16 for c in convs)
    assert all(n.weight.dtype == torch.float32 for n in norms)
    assert len(heads) == 1 and heads[0].inner.out_features == 1000
    assert heads[0].inner.weight.dtype == torch.float32
    x = torch.randn(2, 1024, dtype=torch.bfloat16)
    assert heads[0](x).dtype == torch.float32
    # On the CPU the setting changes nothing.
    cpu = prepare_module(
        mobilenet_v3_small(), torch.device("cpu"), channels_last=True, compile=False, half="float16"
    )
    assert all(p.dtype == torch.float32 for p in cpu.parameters())


@pytest.mark.parametrize("backend", ["torchcodec", "torchvision"])
@pytest.mark.parametrize("orientation", [3, 6])
def test_batched_jpeg_decode_turns_images_upright_exactly_once(
    backend: str, orientation: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from models.preprocess import decode_and_preprocess
    from services.gpu_worker import gpu_decode
    from tests.images import make_image
    from tests.real_world import exif_bytes, save

    cpu = torch.device("cpu")
    if backend == "torchvision":
        monkeypatch.setattr(gpu_decode, "_codec_on", lambda device: None)
    elif gpu_decode._codec_on(cpu) is None:
        pytest.skip("TorchCodec is not installed")
    pre = BUILTIN_MODELS["mobilenet_v3_small"].preprocess
    data = save(make_image(4, (640, 400)), "JPEG", quality=92, exif=exif_bytes(orientation))
    decode = gpu_decode.make_gpu_decoder(pre, 40_000_000, cpu)
    batch = gpu_decode.stack_batch([decode(data), decode(data)], cpu)
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, 3, 224, 224)
    reference = decode_and_preprocess(data, pre, max_pixels=40_000_000).astype(int)
    assert np.abs(batch[0].numpy().astype(int) - reference).mean() < 4


def test_torchscript_models_keep_float32_weights() -> None:
    from models.handlers.tensors import prepare_module

    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()))
    # A CUDA device object (no GPU needed: nothing is moved) reaches the decision.
    out = prepare_module(
        scripted, torch.device("cuda"), channels_last=False, compile=False, half="float16"
    )
    assert all(p.dtype == torch.float32 for p in out.parameters())
