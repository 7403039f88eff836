"""CUDA paths: run only where a GPU is visible (skipped on CPU-only machines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.specs import BUILTIN_MODELS
from services.gpu_worker.device import DevicePlan, autocast_kwargs, resolve_device
from services.gpu_worker.inference import ForwardError, Normalizer, forward_split

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PRE = BUILTIN_MODELS["mobilenet_v3_small"].preprocess


def test_auto_picks_cuda() -> None:
    device, label = resolve_device(DevicePlan("auto", "auto"))
    assert device.type == "cuda"
    assert label == "cuda:0"


def test_normalizer_on_cuda_is_channels_last_and_matches_cpu() -> None:
    batch = np.random.default_rng(0).integers(0, 255, (4, 3, 32, 32), dtype=np.uint8)
    on_gpu = Normalizer(PRE, torch.device("cuda:0"), channels_last=True)(batch)
    on_cpu = Normalizer(PRE, torch.device("cpu"), channels_last=True)(batch)
    assert on_gpu.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(on_gpu.cpu().numpy(), on_cpu.numpy(), atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_autocast_forward_agrees_with_fp32(dtype: str) -> None:
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    model = mobilenet_v3_small().eval().cuda().to(memory_format=torch.channels_last)
    norm = Normalizer(PRE, torch.device("cuda:0"), channels_last=True)
    batch = np.random.default_rng(1).integers(0, 255, (8, 3, 224, 224), dtype=np.uint8)
    kwargs = autocast_kwargs("cuda", dtype)
    assert kwargs is not None

    def run_amp(b: np.ndarray) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(**kwargs):
            out: torch.Tensor = model(norm(b))
            return out

    def run_fp32(b: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(norm(b))
            return out

    amp = run_amp(batch)
    assert amp.dtype == kwargs["dtype"]
    np.testing.assert_allclose(
        amp.float().cpu().numpy(), run_fp32(batch).cpu().numpy(), atol=5e-2, rtol=5e-2
    )
    outputs = forward_split(lambda items: list(run_amp(np.stack(items))), list(batch))
    assert len(outputs) == 8 and not any(isinstance(o, ForwardError) for o in outputs)


def test_gpu_jpeg_decode_is_close_to_the_cpu_path() -> None:
    import io

    from PIL import Image

    from models.preprocess import decode_and_preprocess
    from services.gpu_worker.gpu_decode import make_gpu_decoder, stack_batch

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    device = torch.device("cuda:0")
    pending = make_gpu_decoder(PRE, 40_000_000, device)(data)
    on_cpu = decode_and_preprocess(data, PRE, max_pixels=40_000_000)
    batch = stack_batch([pending, on_cpu, pending], device)
    assert isinstance(batch, torch.Tensor) and batch.device.type == "cuda"
    assert batch.shape == (3, 3, 224, 224)
    diff = np.abs(batch[0].cpu().numpy().astype(int) - on_cpu.astype(int))
    assert diff.mean() < 8  # different resamplers, same picture
    assert torch.equal(batch[1].cpu(), torch.from_numpy(on_cpu))


def test_compile_with_buckets_runs() -> None:
    from services.common.settings import WorkerSettings
    from services.gpu_worker.serving import build_served

    spec = BUILTIN_MODELS["mobilenet_v3_small"]
    settings = WorkerSettings(
        compile=True, batch_buckets=True, max_batch_size=8, allow_random_weights=True
    )
    served = build_served(spec, settings, torch.device("cuda:0"))
    items = list(np.random.default_rng(0).integers(0, 255, (3, 3, 224, 224), dtype=np.uint8))
    outputs = served.forward(items)
    assert len(outputs) == 3 and outputs[0].shape == (1000,)


@pytest.mark.parametrize(
    "name", ["ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "resnet18_embedding"]
)
def test_every_task_runs_under_autocast_on_cuda(name: str) -> None:
    import io

    from PIL import Image

    from services.common.settings import WorkerSettings
    from services.gpu_worker.serving import build_served

    settings = WorkerSettings(allow_random_weights=True, allow_download=False)
    served = build_served(BUILTIN_MODELS[name], settings, torch.device("cuda:0"))
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 120, 200)).save(buf, "JPEG")
    params = served.params_type()
    items = [served.decode(buf.getvalue(), params) for _ in range(3)]
    for output in served.forward(items):
        result = served.handler.encode(output, params)
        assert isinstance(result, dict) and result


@pytest.mark.parametrize("orientation", range(1, 9))
def test_gpu_decode_applies_exif_orientation(orientation: int) -> None:
    from models.preprocess import decode_and_preprocess
    from services.gpu_worker.gpu_decode import make_gpu_decoder, stack_batch
    from tests.images import make_image
    from tests.real_world import exif_bytes, save

    # Not square, so a missed rotation changes the crop, not just the pixel order.
    data = save(make_image(4, (640, 400)), "JPEG", quality=92, exif=exif_bytes(orientation))
    pending = make_gpu_decoder(PRE, 40_000_000, torch.device("cuda:0"))(data)
    on_gpu = stack_batch([pending], torch.device("cuda:0"))[0]
    assert isinstance(on_gpu, torch.Tensor) and on_gpu.device.type == "cuda"
    on_cpu = decode_and_preprocess(data, PRE, max_pixels=40_000_000)
    diff = np.abs(on_gpu.cpu().numpy().astype(int) - on_cpu.astype(int))
    assert diff.mean() < 8  # different resamplers, same picture the same way up


def test_gpu_decode_sends_thin_and_appended_jpegs_through_safe_paths() -> None:
    from services.gpu_worker.gpu_decode import make_gpu_decoder, stack_batch
    from tests.images import make_image
    from tests.real_world import save

    device = torch.device("cuda:0")
    decode = make_gpu_decoder(PRE, 40_000_000, device)
    thin = save(make_image(1, (400, 40)).resize((10, 4000)), "JPEG")
    assert isinstance(decode(thin), np.ndarray)  # the CPU path resamples only the crop
    appended = save(make_image(2, (320, 240)), "JPEG") + b"\x00ftypmp42" + b"\x17" * 100_000
    assert stack_batch([decode(appended)], device).shape == (1, 3, 224, 224)
