"""Every built-in task served end to end equals torchvision called directly.

One stack serves a classifier, an embedder, a detector and a segmenter, all on seeded,
BatchNorm-calibrated weights (a fresh model's output is flat and would prove nothing).
Each task's images go through once together with an undecodable one (a batch of more
than one must be observed; the bad image fails alone) and once one at a time; both must
match the model run in this process with torchvision's own transforms, within the
issue's tolerances.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as F  # noqa: N812

from services.common.redis_server import RedisServer
from tests.conftest import TEST_MODEL, make_seeded_detector, make_seeded_segmenter
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.helpers import files
from tests.integration.stack import ROOT, Stack
from tests.integration.test_ui import ARGS, CHROMIUM

EMBEDDER = "mobilenet_v3_small_embedding"
DETECTOR = "ssdlite320_mobilenet_v3_large"
SEGMENTER = "lraspp_mobilenet_v3_large"
CUSTOM = "mean_color"
SIZES = [(320, 240), (200, 300), (256, 256)]
PARAMS: dict[str, dict[str, str]] = {
    TEST_MODEL: {"top_k": "5"},
    EMBEDDER: {"normalize": "true"},
    DETECTOR: {"score_threshold": "0.0", "max_detections": "300"},
    SEGMENTER: {"format": "png"},
}


def _images() -> list[tuple[str, bytes]]:
    return [(f"img{i}.jpg", jpeg(30 + i, size)) for i, size in enumerate(SIZES)]


def _corrupt() -> bytes:
    # Passes the API's header and trailer checks, fails to decode in the worker.
    data = bytearray(jpeg(40))
    data[len(data) // 2 : len(data) // 2 + 500] = b"\xff" * 500
    return bytes(data)


@pytest.fixture(scope="module")
def task_stack(
    seeded_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, dict[str, Path]]]:
    folder = tmp_path_factory.mktemp("tasks")
    weights = {
        TEST_MODEL: seeded_weights,
        EMBEDDER: seeded_weights,
        DETECTOR: make_seeded_detector(folder / "ssdlite.pt"),
        SEGMENTER: make_seeded_segmenter(folder / "lraspp.pt"),
    }
    models_file = folder / "models.toml"
    models_file.write_text(
        f'[[models]]\nname = "{TEST_MODEL}"\narch = "mobilenet_v3_small"\n'
        f'weights = "{seeded_weights}"\n\n'
        f'[[models]]\nname = "{EMBEDDER}"\narch = "mobilenet_v3_small"\ntask = "embedding"\n'
        f'weights = "{seeded_weights}"\n\n'
        f'[[models]]\nname = "{DETECTOR}"\narch = "{DETECTOR}"\n'
        f'weights = "{weights[DETECTOR]}"\n\n'
        f'[[models]]\nname = "{SEGMENTER}"\narch = "{SEGMENTER}"\n'
        f'weights = "{weights[SEGMENTER]}"\n\n'
        f'[[models]]\nname = "{CUSTOM}"\n'
        'handler = "examples.handlers.mean_color:MeanColorHandler"\n'
        "options = { thumbnail = 16 }\n"
    )
    models = ",".join([TEST_MODEL, EMBEDDER, DETECTOR, SEGMENTER, "noop", CUSTOM])
    env = stack_env(
        models_file,
        VISIONQ_MODELS=models,
        VISIONQ_MAX_BATCH_SIZE="8",
        # Detection on a loaded 2-core machine takes seconds per batch.
        VISIONQ_BATCH_TIME_LIMIT_S="120",
        VISIONQ_VISIBILITY_TIMEOUT_S="400",
        VISIONQ_PREDICT_TIMEOUT_S="300",
    )
    server = RedisServer(port=0).start()
    stack = Stack(server.url, folder, env)
    try:
        stack.start_with_worker(timeout=300)
        yield stack, weights
    finally:
        stack.stop_all()
        server.stop()


def _reference_model(name: str, weights: Path) -> torch.nn.Module:
    arch = "mobilenet_v3_small" if name in (TEST_MODEL, EMBEDDER) else name
    extra: dict[str, Any] = {} if name in (TEST_MODEL, EMBEDDER) else {"weights_backbone": None}
    classes = {DETECTOR: 91, SEGMENTER: 21}.get(name, 1000)
    model = torchvision.models.get_model(arch, weights=None, num_classes=classes, **extra)
    model.load_state_dict(torch.load(weights, weights_only=True))
    if name == EMBEDDER:
        model.classifier[3] = torch.nn.Identity()  # type: ignore[index]
    return model.eval()


def _reference(name: str, model: torch.nn.Module, image: Image.Image) -> Any:
    """The model on one image, with torchvision's own transforms, in this process."""
    arch = "mobilenet_v3_small" if name in (TEST_MODEL, EMBEDDER) else name
    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    with torch.inference_mode():
        if name == DETECTOR:
            return model([transforms(image)])[0]
        if name == SEGMENTER:
            x = F.normalize(
                F.to_dtype(F.pil_to_tensor(F.resize(image, [520, 520])), torch.float32, True),
                [0.485, 0.456, 0.406],
                [0.229, 0.224, 0.225],
            )
            logits = model(x[None])["out"]
            up = torch.nn.functional.interpolate(
                logits, size=(image.height, image.width), mode="bilinear", align_corners=False
            )
            return up[0].argmax(0).numpy()
        out = model(transforms(image)[None])[0]
        return torch.softmax(out, 0) if name == TEST_MODEL else out


def _check(name: str, result: dict[str, Any], ref: Any) -> None:
    if name == TEST_MODEL:
        top = result["top_k"]
        scores, indices = ref.topk(5)
        assert [t["index"] for t in top] == indices.tolist()
        np.testing.assert_allclose([t["score"] for t in top], scores.numpy(), atol=1e-4)
    elif name == EMBEDDER:
        got = np.asarray(result["embedding"], dtype=np.float64)
        want = ref.numpy().astype(np.float64)
        assert result["dim"] == want.shape[0] == got.shape[0]
        cosine = got @ want / (np.linalg.norm(got) * np.linalg.norm(want))
        assert cosine > 0.9999
        assert abs(np.linalg.norm(got) - 1.0) < 1e-5  # normalize=true
    elif name == DETECTOR:
        dets = result["detections"]
        assert len(dets) == len(ref["scores"]) > 0
        unmatched = 0
        for det in dets[:50]:
            close = (
                (ref["labels"] == det["index"])
                & ((ref["boxes"] - torch.tensor(det["box"])).abs().amax(1) <= 0.5)
                & ((ref["scores"] - det["score"]).abs() <= 1e-3)
            )
            unmatched += int(not bool(close.any()))
        assert unmatched == 0
    else:
        png = base64.b64decode(result["mask"]["data"])
        mask = np.asarray(Image.open(io.BytesIO(png)))
        assert mask.shape == ref.shape == (result["height"], result["width"])
        assert (mask == ref).mean() >= 0.999
        assert sum(c["fraction"] for c in result["classes"]) == pytest.approx(1.0)


@pytest.mark.parametrize("name", [TEST_MODEL, EMBEDDER, DETECTOR, SEGMENTER])
def test_served_equals_torchvision_batched_and_alone(
    task_stack: tuple[Stack, dict[str, Path]], name: str
) -> None:
    stack, weights = task_stack
    model = _reference_model(name, weights[name])
    images = _images()
    # JPEG round trip: the reference must see the decoded bytes, as the server does.
    refs = [
        _reference(name, model, Image.open(io.BytesIO(data)).convert("RGB")) for _, data in images
    ]
    data = {"model": name, **PARAMS[name]}
    parts = files(*images, ("bad.jpg", _corrupt()))
    # An idle worker runs the first job at once; the rest batch behind it, unless this busy
    # machine delays their messages past its forward pass: send again until one batched.
    for _ in range(4):
        resp = httpx.post(f"{stack.url}/v1/predict", files=parts, data=data, timeout=300)
        assert resp.status_code == 200, resp.text
        preds = resp.json()["predictions"]
        assert preds[-1]["error"]["code"] == "invalid_image"
        if max(p["timings"].get("batch_size", 0) for p in preds) > 1:
            break
    assert max(p["timings"].get("batch_size", 0) for p in preds) > 1
    for pred, ref in zip(preds[:-1], refs, strict=True):
        _check(name, pred["result"], ref)
    if name == TEST_MODEL:
        assert all(p["top_k"] == p["result"]["top_k"] for p in preds[:-1])
    for (filename, image), ref in zip(images, refs, strict=True):
        alone = httpx.post(
            f"{stack.url}/v1/predict", files=files((filename, image)), data=data, timeout=300
        )
        assert alone.status_code == 200, alone.text
        (pred,) = alone.json()["predictions"]
        assert pred["timings"]["batch_size"] == 1
        _check(name, pred["result"], ref)


def test_models_list_task_and_params_schema(task_stack: tuple[Stack, dict[str, Path]]) -> None:
    stack, _ = task_stack
    models = {m["name"]: m for m in httpx.get(f"{stack.url}/v1/models").json()["models"]}
    assert models[DETECTOR]["task"] == "detection"
    assert models[EMBEDDER]["task"] == "embedding"
    assert models[SEGMENTER]["task"] == "segmentation"
    assert models["noop"]["task"] == "noop"
    schema = models[DETECTOR]["params_schema"]
    assert set(schema["properties"]) == {"score_threshold", "max_detections"}
    assert schema["properties"]["score_threshold"]["maximum"] == 1.0


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [(DETECTOR, "top_k", "3"), (DETECTOR, "score_threshold", "2"), (TEST_MODEL, "top_k", "x")],
)
def test_bad_params_are_422_naming_the_field(
    task_stack: tuple[Stack, dict[str, Path]], model: str, field: str, value: str
) -> None:
    stack, _ = task_stack
    resp = httpx.post(
        f"{stack.url}/v1/predict",
        files=files(("a.jpg", jpeg(1))),
        data={"model": model, field: value},
        timeout=60,
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "validation_error"
    assert field in resp.json()["error"]["message"]


def test_noop_returns_the_byte_count(task_stack: tuple[Stack, dict[str, Path]]) -> None:
    stack, _ = task_stack
    image = jpeg(3)
    resp = httpx.post(
        f"{stack.url}/v1/predict", files=files(("a.jpg", image)), data={"model": "noop"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"][0]["result"] == {"bytes": len(image)}


def test_embedding_base64_f16_round_trips(task_stack: tuple[Stack, dict[str, Path]]) -> None:
    stack, _ = task_stack
    image = files(("a.jpg", jpeg(5)))
    got = {}
    for encoding in ("float32", "base64-f16"):
        resp = httpx.post(
            f"{stack.url}/v1/predict",
            files=image,
            data={"model": EMBEDDER, "encoding": encoding},
            timeout=120,
        )
        assert resp.status_code == 200, resp.text
        got[encoding] = resp.json()["predictions"][0]["result"]
    full = np.asarray(got["float32"]["embedding"], dtype=np.float32)
    half = np.frombuffer(base64.b64decode(got["base64-f16"]["embedding"]), dtype="<f2")
    assert half.shape == full.shape
    np.testing.assert_allclose(half.astype(np.float32), full, atol=2e-3)


def test_the_worked_example_handler_is_served(task_stack: tuple[Stack, dict[str, Path]]) -> None:
    """docs/HANDLERS.md's example, declared in the models file, batched with a bad image."""
    stack, _ = task_stack
    images = _images()
    resp = httpx.post(
        f"{stack.url}/v1/predict",
        files=files(*images, ("bad.jpg", _corrupt())),
        data={"model": CUSTOM, "digits": "6"},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert preds[-1]["error"]["code"] == "invalid_image"
    for pred, (_, data) in zip(preds[:-1], images, strict=True):
        thumb = Image.open(io.BytesIO(data)).convert("RGB").resize((16, 16))
        rgb = np.asarray(thumb, dtype=np.float64).reshape(-1, 3).mean(0) / 255.0
        np.testing.assert_allclose(pred["result"]["mean_rgb"], rgb, atol=2e-6)
        luma = float(rgb @ np.array([0.299, 0.587, 0.114]))
        assert pred["result"]["brightness"] == pytest.approx(luma, abs=2e-6)
    models = {m["name"]: m for m in httpx.get(f"{stack.url}/v1/models").json()["models"]}
    assert models[CUSTOM]["task"] == "color"
    assert set(models[CUSTOM]["params_schema"]["properties"]) == {"digits"}
    bad = httpx.post(
        f"{stack.url}/v1/predict",
        files=files(images[0]),
        data={"model": CUSTOM, "digits": "99"},
        timeout=60,
    )
    assert bad.status_code == 422 and "digits" in bad.json()["error"]["message"]


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """A headless Chromium page, as in test_ui.py; skips where either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium: apt-get install chromium (.ci/run does)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_upload_page_draws_detection_boxes(
    task_stack: tuple[Stack, dict[str, Path]], page: Any, tmp_path: Path
) -> None:
    """Headless Chromium: pick the detector, set its params, upload, see the boxes drawn."""
    stack, _ = task_stack
    photo = tmp_path / "street.jpg"
    photo.write_bytes(jpeg(33, (320, 240)))
    page.goto(stack.url + "/")
    page.wait_for_selector(f'#model option[value="{DETECTOR}"]', state="attached")
    page.select_option("#model", DETECTOR)
    page.wait_for_selector("#param-score_threshold")
    assert page.locator("#topk").count() == 0  # a detector has no top_k
    page.fill("#param-score_threshold", "0.0")
    page.fill("#param-max_detections", "5")
    page.set_input_files("#files", [str(photo)])
    canvas = page.wait_for_selector(".card.ok canvas[data-boxes]", timeout=120_000)
    assert canvas.get_attribute("data-boxes") == "5"
    size = page.evaluate("() => { const c = document.querySelector('.card.ok canvas');"
                         " return [c.width, c.height]; }")  # fmt: skip
    assert size == [320, 240]  # drawn in the image's own pixels
    assert "5 detections" in page.locator(".card.ok").inner_text()


def test_cli_writes_detections_as_csv_rows_and_any_task_as_jsonl(
    task_stack: tuple[Stack, dict[str, Path]], tmp_path: Path
) -> None:
    stack, _ = task_stack
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        (folder / f"p{i}.jpg").write_bytes(jpeg(50 + i, (160, 120)))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "services.cli.main", "predict", str(folder)]
        return subprocess.run([*command, "--url", stack.url, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    out = tmp_path / "boxes.csv"
    params = ["--param", "score_threshold=0", "--param", "max_detections=3"]
    run = cli("--model", DETECTOR, *params, "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and all(r["label"] and r["x2"] for r in rows)
    assert {Path(r["path"]).name for r in rows} == {"p0.jpg", "p1.jpg"}

    out = tmp_path / "emb.jsonl"
    run = cli("--model", EMBEDDER, "--param", "encoding=base64-f16", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(r["result"]["dim"] == 1024 for r in records)

    refused = cli("--model", EMBEDDER, "--out", str(tmp_path / "emb.csv"))
    assert refused.returncode != 0 and "JSON lines" in refused.stderr
