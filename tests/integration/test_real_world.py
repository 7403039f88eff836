"""Real-world images through the real stack: `visionq predict` over a corpus of every kind.

Every file is classified or refused with its documented code, and every classified kind gets
the top-k that torchvision's own transforms give on the viewer-correct picture, with the same
seeded weights, batched and alone. The thin images (1x30000, 30000x1) are answered among
normal ones without growing the worker's peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.helpers import files, predict
from tests.integration.stack import ROOT, Stack
from tests.real_world import corpus, save

pytestmark = pytest.mark.integration

TOP_K = 5
TOLERANCE = 1e-4
KINDS_FOR_STACK = corpus()


@pytest.fixture(scope="module")
def reference(seeded_weights: Path) -> dict[str, list[tuple[int, float]]]:
    """(index, score) top-k of each accepted kind, computed in this process by torchvision."""
    model = torchvision.models.mobilenet_v3_small()
    model.load_state_dict(torch.load(seeded_weights, weights_only=True))
    model.eval()
    transform = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.transforms()
    out: dict[str, list[tuple[int, float]]] = {}
    for kind in KINDS_FOR_STACK:
        if kind.reference is None:
            continue
        with torch.inference_mode():
            scores = model(transform(kind.reference)[None]).softmax(-1)[0]
        top = scores.topk(TOP_K)
        out[kind.name] = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    return out


def _assert_same(
    name: str, served: list[dict[str, Any]], expected: list[tuple[int, float]]
) -> None:
    got = [(t["index"], t["score"]) for t in served]
    assert [i for i, _ in got] == [i for i, _ in expected], f"{name}: {got} != {expected}"
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert abs(a - b) <= TOLERANCE, f"{name}: {got} != {expected}"


def test_corpus_through_visionq_predict(
    stack: Stack, tmp_path: Path, reference: dict[str, list[tuple[int, float]]]
) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for kind in KINDS_FOR_STACK:
        (folder / kind.name).write_bytes(kind.data)
    out = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "services.cli.main", "predict", str(folder), "--url", stack.url,
           "--out", str(out), "--top-k", str(TOP_K), "--model", TEST_MODEL]  # fmt: skip
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    records = {r["filename"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(records) == sorted(k.name for k in KINDS_FOR_STACK), run.stderr
    refused: dict[str, int] = {}
    for kind in KINDS_FOR_STACK:
        record = records[kind.name]
        got = record["error"]["code"] if "error" in record else "ok"
        assert got == kind.expect, f"{kind.name}: {record}"
        if kind.expect != "ok":
            refused[kind.expect] = refused.get(kind.expect, 0) + 1
        elif kind.name in reference:
            _assert_same(kind.name, record["top_k"], reference[kind.name])
    accepted = sum(k.expect == "ok" for k in KINDS_FOR_STACK)
    reasons = ", ".join(f"{code} {n}" for code, n in sorted(refused.items(), key=lambda x: -x[1]))
    assert run.returncode == 1, run.stderr
    assert f"{accepted} done, {sum(refused.values())} failed" in run.stderr
    for code, n in refused.items():
        assert f"{code} {n}" in run.stderr, (reasons, run.stderr)


def test_each_kind_batched_and_alone(
    stack: Stack, reference: dict[str, list[tuple[int, float]]]
) -> None:
    kinds = [k for k in KINDS_FOR_STACK if k.name in reference]
    batch_sizes = []
    for start in range(0, len(kinds), 16):  # VISIONQ_MAX_FILES_PER_REQUEST is 32 here
        group = kinds[start : start + 16]
        together = predict(stack.url, files(*[(k.name, k.data) for k in group]), top_k=TOP_K)
        assert together.status_code == 200, together.text
        predictions = together.json()["predictions"]
        batch_sizes += [p["timings"]["batch_size"] for p in predictions]
        for kind, prediction in zip(group, predictions, strict=True):
            _assert_same(kind.name, prediction["top_k"], reference[kind.name])
    assert max(batch_sizes) > 1, batch_sizes  # the worker really batched them
    for kind in kinds:
        alone = predict(stack.url, files((kind.name, kind.data)), top_k=TOP_K)
        assert alone.status_code == 200, alone.text
        _assert_same(kind.name, alone.json()["predictions"][0]["top_k"], reference[kind.name])


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_thin_images_among_normal_ones(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    worker = next(p for p in stack.procs if p.name == "worker")
    normal = [(f"n{i}.jpg", jpeg(40 + i, (640, 480))) for i in range(6)]
    warm = predict(stack.url, files(*normal), top_k=1)
    assert warm.status_code == 200, warm.text
    before = _peak_rss_mb(worker.popen.pid)
    thin = [("thin_1x30000.png", _png((1, 30000))), ("thin_30000x1.png", _png((30000, 1)))]
    start = time.monotonic()
    resp = predict(stack.url, files(*normal[:3], thin[0], *normal[3:], thin[1]), top_k=1)
    seconds = time.monotonic() - start
    assert resp.status_code == 200, resp.text
    predictions = resp.json()["predictions"]
    assert all("top_k" in p for p in predictions), predictions
    after = _peak_rss_mb(worker.popen.pid)
    assert after - before < 100, f"worker peak RSS grew {after - before:.1f} MB"
    timings = {p["filename"]: p["timings"] for p in predictions}
    with capsys.disabled():
        print(
            f"\nthin images: worker peak RSS {before:.1f} -> {after:.1f} MB;"
            f" request {seconds:.3f} s;"
            f" decode_ms {[timings[n]['decode_ms'] for n, _ in thin]};"
            f" total_ms {[timings[n]['total_ms'] for n, _ in thin]};"
            f" normal total_ms {[timings[n]['total_ms'] for n, _ in normal]}"
        )


def _png(size: tuple[int, int]) -> bytes:
    noise = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), np.uint8)
    return save(Image.fromarray(noise), "PNG")
