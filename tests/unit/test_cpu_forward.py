"""The CPU forward path: BatchNorm folded into convolutions, channels_last batches."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import load_registry
from models.handlers import HandlerOptions
from models.handlers.classification import ClassificationHandler
from models.handlers.tensors import Normalizer, fold_batchnorm, prepare_module
from models.seeded import seeded_classifier
from models.specs import BUILTIN_MODELS, ModelSpec
from services.common.errors import ConfigError
from services.common.settings import WorkerSettings
from services.gpu_worker.serving import build_served, wrap_handler

PRE = BUILTIN_MODELS["mobilenet_v3_small"].preprocess
CPU = torch.device("cpu")


def _batch(n: int, seed: int) -> torch.Tensor:
    """Inputs drawn like the seeded model's calibration batches, so its top-1 varies."""
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _batchnorms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


def test_folded_classifier_agrees_with_the_loaded_one() -> None:
    reference = seeded_classifier()
    assert _batchnorms(reference) > 30
    prepared = prepare_module(
        seeded_classifier(), CPU, channels_last=True, compile=False, fold=True
    )
    assert _batchnorms(prepared) == 0
    x = _batch(48, seed=7)
    with torch.inference_mode():
        want = reference(x).softmax(1)
        got = prepared(x.contiguous(memory_format=torch.channels_last)).softmax(1)
    # The calibrated model's scores differ per image (else agreement would prove nothing).
    assert len(set(want.argmax(1).tolist())) > 5
    assert torch.equal(got.argmax(1), want.argmax(1))
    # Relative: the scores are ~1e-3 each, so an absolute 1e-5 would allow 1 % of one.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)


def test_unfolded_when_not_asked_or_not_on_the_cpu() -> None:
    kept = prepare_module(seeded_classifier(), CPU, channels_last=False, compile=False)
    assert _batchnorms(kept) > 30
    # (No CUDA call is made: no half weights, no channels_last.)
    on_cuda = prepare_module(
        seeded_classifier(), torch.device("cuda"), channels_last=False, compile=False, fold=True
    )
    assert _batchnorms(on_cuda) > 30


class _Branchy(torch.nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it (as in detectors)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            return y
        return -y


def test_a_module_fx_cannot_follow_is_left_as_it_was(caplog: pytest.LogCaptureFixture) -> None:
    module = _Branchy().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        want = module(x)
    with caplog.at_level(logging.INFO):
        same, folded = fold_batchnorm(module)
    assert same is module and folded == 0
    assert "BatchNorm not folded" in caplog.text
    with torch.inference_mode():
        assert torch.equal(same(x), want)


def test_a_module_in_training_mode_is_not_folded() -> None:
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    same, folded = fold_batchnorm(module)
    assert same is module and folded == 0


def test_cpu_batches_are_channels_last_and_unchanged_in_value() -> None:
    batch = np.random.default_rng(1).integers(0, 255, (4, 3, 16, 16), dtype=np.uint8)
    nhwc = Normalizer(PRE, CPU, channels_last=True)(batch)
    nchw = Normalizer(PRE, CPU, channels_last=False)(batch)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nhwc, nchw)


def test_the_folded_module_keeps_its_class_and_submodules() -> None:
    """A handler may call parts of the model (features, avgpool, classifier[-1]): after the
    fold they are the same objects as before, with the same results."""
    reference = seeded_classifier()
    module = seeded_classifier()
    parts = (module.features, module.avgpool, module.classifier)
    folded, count = fold_batchnorm(module)
    assert folded is module and count > 30 and _batchnorms(folded) == 0
    assert (folded.features, folded.avgpool, folded.classifier) == parts
    assert isinstance(folded.classifier[-1], torch.nn.Linear)
    x = _batch(8, seed=3)
    with torch.inference_mode():
        want = reference.features(x)
        got = folded.features(x)
        head = folded.classifier(torch.flatten(folded.avgpool(got), 1))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head, reference(x), rtol=1e-4, atol=1e-5)


class _Shared(torch.nn.Module):
    """One convolution called twice, each call followed by its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(3)
        self.bn2 = torch.nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x))


def test_a_layer_called_twice_is_not_folded() -> None:
    module = _Shared()
    for bn in (module.bn1, module.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    module.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        want = module(x)
    same, folded = fold_batchnorm(module)
    assert folded == 0 and _batchnorms(same) == 2
    with torch.inference_mode():
        assert torch.equal(same(x), want)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_is_served_as_loaded_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    scripted = torch.jit.script(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    )
    with caplog.at_level(logging.INFO):
        same, folded = fold_batchnorm(scripted)
    assert same is scripted and folded == 0
    assert "TorchScript" in caplog.text


class _ViewNet(torch.nn.Module):
    """conv -> bn -> relu -> pool, then ``.view``: valid only on a contiguous NCHW input
    (on a channels_last one, the pooled (N, C, 1, 1) tensor has strides .view refuses)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.fc = torch.nn.Linear(32, 5)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(y.view(y.size(0), -1))


def _view_spec(tmp_path: Path, kind: str) -> ModelSpec:
    model = _ViewNet().eval()
    if kind == "torchscript":
        archive = tmp_path / "viewnet.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
            torch.jit.save(torch.jit.script(model), str(archive))
    else:
        archive = tmp_path / "viewnet.pt2"
        batch = torch.export.Dim("batch", min=1, max=1024)
        example = (torch.randn(2, 3, 32, 32),)
        torch.export.save(
            torch.export.export(model, example, dynamic_shapes=({0: batch},)), archive
        )
    (tmp_path / "labels.txt").write_text("".join(f"c{i}\n" for i in range(5)))
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        f'[[models]]\nname = "viewnet"\n{kind} = "{archive.name}"\nlabels = "labels.txt"\n'
        "input_size = 32\n"
    )
    return load_registry(models_file)["viewnet"]


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_an_archive_that_views_is_served_with_the_default_settings(
    tmp_path: Path, kind: str
) -> None:
    """Archives get the NCHW batches they were traced with, whatever VISIONQ_CHANNELS_LAST
    says (it is on by default): a .view in them raised on channels_last batches."""
    spec = _view_spec(tmp_path, kind)
    settings = WorkerSettings()
    assert settings.channels_last and settings.fold_batchnorm  # the defaults under test
    served = build_served(spec, settings, CPU)
    params = served.handler.Params()
    items = [served.decode(_jpeg(seed), params) for seed in range(4)]
    got = torch.stack([torch.as_tensor(out) for out in served.forward(items)])
    batch = Normalizer(spec.preprocess, CPU, channels_last=False)(np.stack(items))
    with torch.inference_mode():
        want = _ViewNet().eval()(batch).softmax(1)
    torch.testing.assert_close(got.reshape(want.shape), want, rtol=1e-4, atol=1e-6)


class _ViewHandler(ClassificationHandler):
    """A built-in classifier whose (eager) model calls .view after a channels_last conv."""

    def setup(self, device: torch.device, spec: ModelSpec) -> None:
        self.spec, self.device, self.labels = spec, device, [f"c{i}" for i in range(5)]
        self.normalize = Normalizer(spec.preprocess, device, self.options.channels_last)
        self.module = prepare_module(
            _ViewNet().eval(),
            device,
            channels_last=self.options.channels_last,
            compile=self.options.compile,
        )
        self._decode, self._stack = self._decode_cpu, np.stack


@pytest.mark.parametrize("compiled", [False, True])
def test_an_eager_model_that_views_names_the_setting_at_start_up(compiled: bool) -> None:
    """Eager torch and torch.compile (Dynamo) word the .view error differently; both get
    the same message, naming the setting."""
    spec = BUILTIN_MODELS["mobilenet_v3_small"]
    handler = _ViewHandler(HandlerOptions(compile=compiled))
    handler.setup(CPU, spec)
    with pytest.raises(ConfigError, match=r"channels_last.*VISIONQ_CHANNELS_LAST=0") as info:
        wrap_handler(handler, spec, WorkerSettings(compile=compiled, max_batch_size=2), CPU)
    said = str(info.value)
    assert "view" in said and ".. " not in said and "\n" not in said, said
    plain = _ViewHandler(HandlerOptions(channels_last=False))
    plain.setup(CPU, spec)
    served = wrap_handler(plain, spec, WorkerSettings(channels_last=False), CPU)
    assert len(served.forward([served.decode(_jpeg(1), served.handler.Params())])) == 1
