"""The GPU path's failure modes, on a real device (skipped without CUDA).

Each test fails on the code before issue 12: a sticky CUDA error failed items one by one,
the OOM retry ran inside the ``except`` block, batches were pinned afresh, compiled models
recompiled on live batches, weights were recast by autocast on every batch, and the memory
gauge missed the allocator's reserved memory.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from models.specs import BUILTIN_MODELS, load_registry
from services.gpu_worker.inference import ForwardError, Normalizer, forward_split

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda:0")
PRE = BUILTIN_MODELS["mobilenet_v3_small"].preprocess


def test_a_sticky_cuda_error_ends_the_forward_instead_of_failing_items() -> None:
    # In a child: a device-side assert poisons the CUDA context of its whole process.
    script = textwrap.dedent(
        """
        import torch
        from services.gpu_worker.inference import DeviceFault, forward_split

        def run(items):
            table = torch.zeros(4, device="cuda")
            index = torch.tensor([10**6], device="cuda")
            out = table[index]  # out of bounds: device-side assert
            torch.cuda.synchronize()
            return [out] * len(items)

        try:
            forward_split(run, list(range(8)))
        except DeviceFault as exc:
            print("DEVICE_FAULT", exc)
        else:
            print("NO_FAULT")
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert "DEVICE_FAULT" in res.stdout, res.stdout + res.stderr[-3000:]


def test_oom_retry_gets_back_the_failed_forwards_memory() -> None:
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    chunk = int(free * 0.3) // 4  # float32 elements: 30% of free memory per item

    def run(items: list[int]) -> list[int]:
        activations = []
        for _ in items:  # 4 items need 120% of free memory; 2 items need 60%
            activations.append(torch.empty(chunk, dtype=torch.float32, device=CUDA))
        del activations
        return [i * 10 for i in items]

    ooms: list[int] = []
    out = forward_split(run, [1, 2, 3, 4], on_oom=lambda: ooms.append(1))
    # Retried inside the except block, the failed forward's 90% stays referenced and the
    # halves fail too, down to an out_of_memory per item.
    assert not any(isinstance(o, ForwardError) for o in out), out
    assert out == [10, 20, 30, 40]
    assert len(ooms) == 1


def test_the_pinned_staging_buffer_is_reused_and_never_overwritten_early() -> None:
    norm = Normalizer(PRE, CUDA, channels_last=True)
    ref = Normalizer(PRE, torch.device("cpu"), channels_last=False)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 255, (16, 3, 224, 224), dtype=np.uint8) for _ in range(4)]
    outs = [norm(b) for b in batches]  # no sync in between: async copies overlap
    pointers = {norm._pinned.data_ptr() if norm._pinned is not None else 0}
    outs.append(norm(batches[0][:8]))  # a smaller batch fits the same buffer
    pointers.add(norm._pinned.data_ptr() if norm._pinned is not None else 0)
    assert len(pointers) == 1 and 0 not in pointers
    for batch, out in zip([*batches, batches[0][:8]], outs, strict=True):
        np.testing.assert_allclose(out.cpu().numpy(), ref(batch).numpy(), atol=1e-5)


def test_compiled_model_is_warmed_for_every_bucket_before_ready() -> None:
    from torch._dynamo.utils import counters

    from services.common.settings import WorkerSettings
    from services.gpu_worker.serving import build_served

    settings = WorkerSettings(compile=True, max_batch_size=8, allow_random_weights=True)
    served = build_served(BUILTIN_MODELS["mobilenet_v3_small"], settings, CUDA)
    assert torch.backends.cudnn.benchmark

    def compiles() -> tuple[int, int]:
        return counters["stats"]["unique_graphs"], counters["frames"]["total"]

    compiled = compiles()
    assert compiled[0] > 0  # it was compiled at all
    rng = np.random.default_rng(0)
    for size in (3, 5, 8, 1, 2, 7):  # live batches of every size after "ready"
        items = list(rng.integers(0, 255, (size, 3, 224, 224), dtype=np.uint8))
        assert len(served.forward(items)) == size
    # No compilation (and no recompilation) on live traffic.
    assert compiles() == compiled


def test_half_weights_are_resident_and_agree_with_fp32(models_file: Path) -> None:
    from torchvision.models import mobilenet_v3_small

    from models.handlers.tensors import Fp32Head
    from services.common.settings import WorkerSettings
    from services.gpu_worker.serving import build_served

    spec = load_registry(models_file)["mobilenet_v3_small"]
    served = build_served(spec, WorkerSettings(max_batch_size=32), CUDA)
    module = served.handler.module  # type: ignore[attr-defined]
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.dtype == torch.float16 for c in convs)
    heads = [m for m in module.modules() if isinstance(m, Fp32Head)]
    assert len(heads) == 1 and heads[0].inner.weight.dtype == torch.float32

    reference = mobilenet_v3_small()
    assert spec.weights_path is not None
    reference.load_state_dict(torch.load(spec.weights_path, map_location="cpu"))
    reference = reference.eval().to(CUDA)
    norm = Normalizer(spec.preprocess, CUDA, channels_last=False)
    rng = np.random.default_rng(3)
    agree = total = 0
    max_diff = 0.0
    for _ in range(8):
        batch = rng.integers(0, 255, (32, 3, 224, 224), dtype=np.uint8)
        # Smooth images (low-frequency noise, upsampled) look more like photos than noise.
        batch = np.repeat(np.repeat(batch[:, :, ::8, ::8], 8, axis=2), 8, axis=3)
        half = torch.stack(served.forward(list(batch)))
        with torch.inference_mode():
            full = torch.softmax(reference(norm(batch)).float(), dim=1).cpu()
        agree += int((half.argmax(1) == full.argmax(1)).sum())
        total += len(batch)
        max_diff = max(max_diff, float((half - full).abs().max()))
    assert agree / total >= 0.97, (agree, total)
    assert max_diff < 0.05, max_diff


def test_memory_gauge_reports_reserved_memory() -> None:
    from prometheus_client import CollectorRegistry

    from services.gpu_worker.gpu_stats import start_gpu_sampler
    from services.gpu_worker.metrics import WorkerMetrics

    registry = CollectorRegistry()
    metrics = WorkerMetrics(8, registry)
    keep = torch.empty(64 * 2**20, dtype=torch.uint8, device=CUDA)
    sampler = start_gpu_sampler("cuda:0", metrics, interval_s=60)
    assert sampler is not None
    sampler.stop()
    value = registry.get_sample_value
    allocated = value("visionq_gpu_memory_allocated_bytes", {"device": "cuda:0"})
    reserved = value("visionq_gpu_memory_reserved_bytes", {"device": "cuda:0"})
    assert allocated is not None and reserved is not None
    assert reserved >= allocated >= keep.numel()


def test_gpu_decode_is_one_batched_call_and_a_refused_jpeg_takes_the_cpu_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.gpu_worker import gpu_decode
    from tests.images import make_image
    from tests.real_world import save

    calls: list[int] = []
    real = gpu_decode._decode_jpegs

    def counting(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        calls.append(len(data))
        return real(data, device)

    monkeypatch.setattr(gpu_decode, "_decode_jpegs", counting)
    decode = gpu_decode.make_gpu_decoder(PRE, 40_000_000, CUDA)
    jpegs = [save(make_image(i, (640, 480)), "JPEG") for i in range(8)]
    batch = gpu_decode.stack_batch([decode(d) for d in jpegs], CUDA)
    assert batch.shape == (8, 3, 224, 224) and calls == [8]  # one nvJPEG call, not 8

    # A progressive-looking stream nvJPEG rejects: truncated scan data after a valid header.
    calls.clear()
    broken = decode(jpegs[0])
    assert isinstance(broken, gpu_decode.PendingJpeg)
    broken.data = broken.data[: len(broken.data) // 3]
    out = gpu_decode.stack_batch([decode(jpegs[1]), broken], CUDA)
    assert out.shape == (2, 3, 224, 224)
    assert calls[0] == 2  # the batch call first, then one by one after its failure
