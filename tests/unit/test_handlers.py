"""The handler contract's torch-free parts, the registry, the models file and params."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.handlers import make_handler, params_class, task_of
from models.handlers.base import HandlerOptions
from models.handlers.params import ClassificationParams, DetectionParams
from models.handlers.registry import import_handler
from models.models_file import parse_models_file
from models.specs import BUILTIN_MODELS
from services.api.uploads import validate_params
from services.common.errors import ConfigError, RequestInvalid

EXAMPLE = "examples.handlers.mean_color:MeanColorHandler"


def test_contract_and_params_import_without_torch() -> None:
    code = (
        "import sys, models.handlers, models.handlers.params, models.handlers.registry; "
        "from models.handlers import params_class; from models.specs import BUILTIN_MODELS; "
        "[params_class(s).model_json_schema() for s in BUILTIN_MODELS.values()]; "
        f"import importlib; importlib.import_module('{EXAMPLE.split(':')[0]}'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("name", "task", "fields"),
    [
        ("resnet18", "classification", {"top_k"}),
        ("ssdlite320_mobilenet_v3_large", "detection", {"score_threshold", "max_detections"}),
        ("resnet18_embedding", "embedding", {"normalize", "encoding"}),
        ("lraspp_mobilenet_v3_large", "segmentation", {"format"}),
        ("noop", "noop", set()),
    ],
)
def test_builtin_tasks_and_their_params(name: str, task: str, fields: set[str]) -> None:
    spec = BUILTIN_MODELS[name]
    assert task_of(spec) == task
    assert set(params_class(spec).model_fields) == fields


def test_every_builtin_classifier_has_an_embedder() -> None:
    classifiers = [s for s in BUILTIN_MODELS.values() if s.task == "classification"]
    for spec in classifiers:
        embedder = BUILTIN_MODELS[f"{spec.name}_embedding"]
        assert embedder.task == "embedding" and embedder.weights_url == spec.weights_url


def test_models_file_tasks_and_custom_handlers(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    path = tmp_path / "models.toml"
    path.write_text(
        f'[[models]]\nname = "emb"\narch = "resnet50"\ntask = "embedding"\n'
        f'weights = "{weights}"\n'
        f'[[models]]\nname = "det"\narch = "ssdlite320_mobilenet_v3_large"\n'
        f'weights = "{weights}"\n'
        f'[[models]]\nname = "mine"\nhandler = "{EXAMPLE}"\noptions = {{ thumbnail = 8 }}\n'
    )
    emb, det, mine = parse_models_file(path)
    assert (emb.task, emb.num_classes) == ("embedding", 1000)
    assert (det.task, det.num_classes) == ("detection", 91)
    assert det.weights_enum == BUILTIN_MODELS[det.arch or ""].weights_enum  # labels: COCO
    assert (mine.kind, mine.handler, mine.options) == ("none", EXAMPLE, {"thumbnail": 8})
    assert task_of(mine) == "color"
    assert set(params_class(mine).model_fields) == {"digits"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('task = "captioning"\narch = "resnet18"\nweights = "w.pt"', "task must be one of"),
        ('handler = "no colon here"', "package.module:ClassName"),
    ],
)
def test_models_file_refuses_bad_entries(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "w.pt").write_bytes(b"x")
    path = tmp_path / "models.toml"
    path.write_text(f'[[models]]\nname = "bad"\n{entry}\n')
    with pytest.raises(ConfigError, match=message):
        parse_models_file(path)


def test_a_handler_path_that_is_not_a_handler_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"subclass of models\.handlers\.Handler"):
        import_handler("models.handlers.params:DetectionParams")
    with pytest.raises(ConfigError, match="cannot import handler module"):
        import_handler("no_such_module_xyz:Thing")


def test_form_fields_are_validated_naming_the_field() -> None:
    spec = BUILTIN_MODELS["ssdlite320_mobilenet_v3_large"]
    assert validate_params(spec, {"score_threshold": "0.25"}) == {
        "score_threshold": 0.25,
        "max_detections": 100,
    }
    with pytest.raises(RequestInvalid, match="'top_k' is not a parameter") as unknown:
        validate_params(spec, {"top_k": "3"})
    assert unknown.value.details["field"] == "top_k"
    with pytest.raises(RequestInvalid, match="'max_detections'"):
        validate_params(spec, {"max_detections": "0"})
    assert ClassificationParams().top_k == 5 and DetectionParams().score_threshold == 0.5


def test_segmentation_run_lengths_round_trip() -> None:
    from models.handlers.segmentation import run_lengths

    mask = np.array([[0, 0, 2], [2, 2, 1]], dtype=np.uint8)
    rle = run_lengths(mask)
    assert rle == {"values": [0, 2, 1], "counts": [2, 3, 1]}
    flat = np.repeat(rle["values"], rle["counts"]).reshape(mask.shape)
    np.testing.assert_array_equal(flat, mask)


@pytest.mark.parametrize(
    ("arch", "dim"),
    [("resnet18", 512), ("mobilenet_v3_small", 1024), ("efficientnet_b0", 1280),
     ("convnext_tiny", 768)],
)  # fmt: skip
def test_remove_head_leaves_the_features(arch: str, dim: int) -> None:
    import torch
    import torchvision

    from models.handlers.embedding import remove_head

    model = remove_head(torchvision.models.get_model(arch, weights=None)).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64)).flatten(1).shape == (1, dim)


def test_noop_handler_needs_no_torch_and_counts_bytes() -> None:
    handler = make_handler(BUILTIN_MODELS["noop"], HandlerOptions())
    handler.setup(None, BUILTIN_MODELS["noop"])
    params = handler.Params()
    outputs = handler.split(handler.predict(handler.collate([handler.decode(b"abc", params)])))
    assert handler.encode(outputs[0], params) == {"bytes": 3}


def test_large_class_maps_are_resized_one_class_at_a_time_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from models.handlers import segmentation

    logits = torch.randn(5, 13, 11, generator=torch.Generator().manual_seed(0))
    direct = segmentation._class_map(logits, (40, 37))
    monkeypatch.setattr(segmentation, "_CHUNKED_ABOVE", 0)
    np.testing.assert_array_equal(segmentation._class_map(logits, (40, 37)), direct)


@pytest.mark.parametrize("size", [(30000, 1), (1, 30000), (10000, 2)])
def test_detector_takes_a_strip(size: tuple[int, int]) -> None:
    """A valid image far longer than MAX_SIDE on one side and 1-2 pixels on the other: the
    shrink keeps one pixel a side instead of asking Pillow for 0 (ZeroDivisionError)."""
    import io

    import torch
    from PIL import Image

    spec = BUILTIN_MODELS["ssdlite320_mobilenet_v3_large"]
    handler = make_handler(spec, HandlerOptions(allow_random_weights=True, allow_download=False))
    handler.setup(torch.device("cpu"), spec)
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 30)).save(buf, format="PNG")
    params = handler.Params()
    item = handler.decode(buf.getvalue(), params)
    assert min(item[0].shape[1:]) >= 1
    # Boxes go back per axis and stay inside the image: detections of a random-weight
    # model at threshold 0 land anywhere in the decoded strip.
    with torch.inference_mode():
        (output,) = handler.split(handler.predict(handler.collate([item])))
    boxes = handler.encode(output, params.model_copy(update={"score_threshold": 0.0}))
    assert boxes["detections"], "no box to check"
    for detection in boxes["detections"]:
        x1, y1, x2, y2 = detection["box"]
        assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1], detection


def test_class_maps_above_the_bound_are_enlarged_from_a_bounded_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 36-megapixel photo must not cost 21 full-size logit maps: the map is computed at
    MAX_MAP_PIXELS and enlarged (here the bound is made small to keep the test quick)."""
    import torch

    from models.handlers import segmentation

    logits = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    logits = torch.nn.functional.interpolate(logits, size=(48, 48), mode="bilinear")[:, 0]
    size = (300, 250)
    exact = segmentation._class_map(logits, size)  # under the real bound: full resolution
    monkeypatch.setattr(segmentation, "MAX_MAP_PIXELS", 100 * 100)
    assert segmentation._bounded(size) == (109, 91)
    bounded = segmentation._class_map(logits, size)
    assert bounded.shape == size and bounded.dtype == np.uint8
    small = segmentation._class_map(logits, (109, 91))
    rows = np.minimum((np.arange(300) + 0.5) * 109 / 300, 108).astype(int)
    cols = np.minimum((np.arange(250) + 0.5) * 91 / 250, 90).astype(int)
    np.testing.assert_array_equal(bounded, small[rows][:, cols])  # nearest neighbour
    assert (bounded == exact).mean() > 0.97  # only boundaries move, by under one cell
    assert len(np.unique(exact)) > 2
