"""VISIONQ_AOT_COMPILE: the CPU forward compiled ahead of time by AOTInductor, and cached."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.handlers import aot
from models.handlers.aot import AOTCompiled, aot_compile
from models.handlers.tensors import prepare_module
from models.seeded import seeded_classifier
from services.common.settings import WorkerSettings

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh Inductor cache directory (torch reads TORCHINDUCTOR_CACHE_DIR per call)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    return tmp_path / "inductor" / "visionq-aot"


def _batch(n: int, seed: int) -> torch.Tensor:
    """Inputs drawn like the seeded model's calibration batches, so its top-1 varies."""
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _prepared() -> torch.nn.Module:
    return prepare_module(
        seeded_classifier(), CPU, channels_last=True, compile=False, fold=True,
        aot_input=(3, 224, 224), name="seeded",
    )  # fmt: skip


def test_compiled_classifier_agrees_with_eager_and_is_reused(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = seeded_classifier()
    compiled = _prepared()
    assert isinstance(compiled, AOTCompiled)
    assert len(list(cache.glob("*.pt2"))) == 1
    with torch.inference_mode():
        # One package, any batch size (the batch dimension is dynamic), either layout.
        for n, seed in ((1, 1), (5, 2), (40, 3)):
            x = _batch(n, seed)
            want = reference(x).softmax(1)
            got = compiled(x.contiguous(memory_format=torch.channels_last)).softmax(1)
            assert torch.equal(got.argmax(1), want.argmax(1))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)
            torch.testing.assert_close(compiled(x).softmax(1), got, rtol=1e-5, atol=1e-9)
        assert len(set(reference(_batch(40, 3)).argmax(1).tolist())) > 5

    # A second worker (same graph, same weights) loads the package instead of compiling.
    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)
    again = _prepared()
    assert isinstance(again, AOTCompiled)
    x = _batch(3, 4)
    with torch.inference_mode():
        torch.testing.assert_close(again(x), compiled(x), rtol=0, atol=0)


def test_the_package_is_named_by_graph_and_weights() -> None:
    example = torch.zeros(2, 3, 64, 64)
    batch = torch.export.Dim("batch", min=1, max=aot.MAX_BATCH)

    def key(module: torch.nn.Module) -> str:
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},))
        return aot._package_key(program)

    def net(seed: int, width: int = 4) -> torch.nn.Module:
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.Flatten(1))

    assert key(net(1)) == key(net(1))
    assert key(net(1)) != key(net(2))  # other weights
    assert key(net(1)) != key(torch.nn.Sequential(*net(1), torch.nn.ReLU()))  # other graph


class _Branchy(torch.nn.Module):
    """Control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


def test_a_module_export_cannot_capture_is_served_eager(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = _Branchy().eval()
    with caplog.at_level(logging.WARNING, logger="models.handlers.aot"):
        served = aot_compile(module, torch.zeros(2, 3, 32, 32), "branchy")
    assert served is module
    assert "VISIONQ_AOT_COMPILE could not compile it, serving it eager" in caplog.text
    assert not cache.exists() or not any(cache.iterdir())  # no package, no temp file


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_not_on_cuda_nor_for_torchscript(caplog: pytest.LogCaptureFixture) -> None:
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval())
    with caplog.at_level(logging.WARNING, logger="models.handlers.tensors"):
        kept = prepare_module(
            scripted, CPU, channels_last=False, compile=False, aot_input=(3, 8, 8), name="ts"
        )
        # No CUDA call is made on this path (no half weights, no channels_last).
        eager = _Branchy().eval()
        on_cuda = prepare_module(
            eager, torch.device("cuda"), channels_last=False, compile=False, aot_input=(3, 8, 8)
        )
    assert kept is scripted and on_cuda is eager
    assert caplog.text.count("VISIONQ_AOT_COMPILE is for eager models on the CPU") == 2


def test_one_compiler_at_a_time() -> None:
    with pytest.raises(ValueError, match="VISIONQ_COMPILE and VISIONQ_AOT_COMPILE"):
        WorkerSettings(compile=True, aot_compile=True)
    assert WorkerSettings(aot_compile=True).aot_compile


def test_random_weights_are_compiled_but_not_kept(cache: Path) -> None:
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(1)).eval()
    served = aot_compile(net, torch.zeros(2, 3, 16, 16), "tiny", cache=False)
    assert isinstance(served, AOTCompiled)
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(served(x), net(x), rtol=1e-5, atol=1e-6)
    assert not cache.exists() or not any(cache.iterdir())
