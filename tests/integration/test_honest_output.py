"""Random weights are never silent: every answer, CSV/JSONL row and page card says so."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.client import Client
from services.common.redis_server import RedisServer
from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.helpers import files, predict, wait_jobs
from tests.integration.stack import ROOT, Stack
from tests.integration.test_ui import page  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def random_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + worker serving the built-in model with no weights anywhere: random init."""
    tmp = tmp_path_factory.mktemp("random")
    env = {
        "VISIONQ_MODELS": TEST_MODEL,
        "VISIONQ_ALLOW_RANDOM_WEIGHTS": "1",
        "VISIONQ_ALLOW_DOWNLOAD": "0",
        "TORCH_HOME": str(tmp / "no-torch-home"),
    }
    with RedisServer(port=0) as server:
        s = Stack(server.url, tmp, env)
        try:
            s.start_with_worker()
            yield s
        finally:
            s.stop_all()


def test_every_api_answer_says_random(random_stack: Stack, stack: Stack) -> None:
    resp = predict(random_stack.url, files(("a.jpg", jpeg(1)), ("b.jpg", jpeg(2))))
    assert resp.status_code == 200, resp.text
    assert all(p["random_weights"] is True for p in resp.json()["predictions"])
    job_id = resp.json()["predictions"][0]["job_id"]
    (record,) = wait_jobs(random_stack.url, [job_id])
    assert record["random_weights"] is True
    assert "random_weights" not in record["result"]  # the job's flag, not the task's result
    with Client(random_stack.url) as client:
        assert client.predict([("c.jpg", jpeg(3))]).predictions[0].random_weights
        assert client.job(job_id).random_weights
    # Trained (here: seeded) weights: no flag at all.
    real = predict(stack.url, files(("a.jpg", jpeg(1))))
    assert "random_weights" not in real.json()["predictions"][0]


def test_every_output_row_says_random(random_stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(1, (64, 64)))
    (tmp_path / "b.jpg").write_bytes(jpeg(2, (64, 64)))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    for out in ("r.csv", "r.jsonl"):
        cmd = [sys.executable, "-m", "services.cli.main", "predict", "a.jpg", "b.jpg",
               "--url", random_stack.url, "--out", out]  # fmt: skip
        run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 2 and all(r["random_weights"] == "true" for r in rows)
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["random_weights"] is True for x in lines)


def test_page_banner_card_and_tie_order(
    random_stack: Stack,
    page: Any,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    image = tmp_path / "x.jpg"
    image.write_bytes(jpeg(5, (64, 64)))
    page.goto(random_stack.url + "/")
    page.wait_for_selector("#random.show", timeout=30_000)
    assert "meaningless" in page.locator("#random").inner_text()
    page.fill("#topk", "8")
    with page.expect_response("**/v1/predict") as answer:
        page.set_input_files("#files", [str(image)])
    card = page.wait_for_selector(".card.ok.random", timeout=60_000)
    assert "random weights" in card.inner_text()
    top = answer.value.json()["predictions"][0]["top_k"]
    # A freshly initialised model scores classes alike: the page must break ties by index.
    assert len({t["score"] for t in top}) < len(top), top
    expected = [t["index"] for t in sorted(top, key=lambda t: (-t["score"], t["index"]))]
    shown = page.locator(".card.ok li.label").evaluate_all(
        "items => items.map(i => Number(i.dataset.index))"
    )
    assert shown == expected
