"""VISIONQ_LOG_FORMAT=json: every line the API and the worker write is one JSON object.

The stack runs a built-in model with random weights (no weights anywhere, no download), so
the warning an operator must not miss is there; light use must not bury it under one line
per request or per task, and a job that fails in the worker is logged with its job and
batch ids as fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from services.common.redis_server import RedisServer
from tests.faults.conftest import fault_jpeg
from tests.images import jpeg
from tests.integration.helpers import files, predict
from tests.integration.stack import Proc, Stack

pytestmark = pytest.mark.integration

MODEL = "mobilenet_v3_small"  # built in; with no weights file it runs on random weights


@pytest.fixture(scope="module")
def json_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Proc, Proc]]:
    server = RedisServer(port=0).start()
    tmp = tmp_path_factory.mktemp("json-logs")
    env = {
        "VISIONQ_LOG_FORMAT": "json",
        "VISIONQ_MODELS": MODEL,
        "VISIONQ_ALLOW_RANDOM_WEIGHTS": "1",
        "VISIONQ_ALLOW_DOWNLOAD": "0",
        "TORCH_HOME": str(tmp / "torch-home"),  # an empty hub cache: no weights to find
        "VISIONQ_MAX_WAIT_MS": "5",
        "VISIONQ_PREDICT_TIMEOUT_S": "60",
        "VISIONQ_FAULT_INJECTION": "1",
    }
    s = Stack(server.url, tmp, env)
    try:
        worker = s.start_worker()  # first: its start-up overlaps the API's
        api = s.start_api()
        s.wait_ready()
        yield s, api, worker
    finally:
        s.stop_all()
        server.stop()


def _records(proc: Proc) -> list[dict[str, Any]]:
    lines = [ln for ln in proc.log.read_text(errors="replace").splitlines() if ln.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{proc.name} wrote a line that is not JSON: {line[:300]!r}")
        assert isinstance(records[-1], dict), line
    return records


def test_every_line_is_json_from_every_part(json_stack: tuple[Stack, Proc, Proc]) -> None:
    stack, api, worker = json_stack
    assert predict(stack.url, files(("a.jpg", jpeg(3)))).status_code == 200
    api_records, worker_records = _records(api), _records(worker)
    for record in api_records + worker_records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert "color_message" not in record  # uvicorn's copy with terminal colour codes
    api_loggers = {r["logger"] for r in api_records}
    worker_loggers = {r["logger"] for r in worker_records}
    assert any(name.startswith("uvicorn") for name in api_loggers), api_loggers
    assert any(name.startswith("celery") for name in worker_loggers), worker_loggers
    assert any(name.startswith("services.gpu_worker") for name in worker_loggers)
    assert any(name.startswith("models.") for name in worker_loggers)


def test_the_random_weights_warning_is_not_buried(json_stack: tuple[Stack, Proc, Proc]) -> None:
    stack, api, worker = json_stack
    before = len(_records(api)) + len(_records(worker))
    for i in range(30):
        assert predict(stack.url, files((f"{i}.jpg", jpeg(100 + i)))).status_code == 200
    after = _records(api) + _records(worker)
    # Thirty requests, thirty tasks: no INFO line each (uvicorn access, Celery received and
    # succeeded); a handful of unrelated lines may come and go.
    assert len(after) - before <= 3, [r["message"][:80] for r in after[before:]]
    warnings = [
        r for r in after if r["level"] == "WARNING" and "random weights" in r["message"].lower()
    ]
    assert warnings, "the random-weights warning is missing"
    assert len(after) <= 40, f"{len(after)} lines already bury the warning"


def test_a_failed_job_is_logged_with_its_ids(json_stack: tuple[Stack, Proc, Proc]) -> None:
    stack, _, worker = json_stack
    # Fault injection (on in this stack): the forward pass of this image runs out of memory.
    resp = predict(stack.url, files(("oom.jpg", fault_jpeg("oom", 5))))
    assert resp.status_code == 200, resp.text
    (prediction,) = resp.json()["predictions"]
    assert prediction["error"]["code"] == "out_of_memory"
    job_id = prediction["job_id"]
    # The worker logs the failure around the time it stores it: the answer may come first.
    deadline = time.monotonic() + 15
    while True:
        records = _records(worker)
        mine = [r for r in records if r.get("job_id") == job_id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert mine and mine[0]["level"] == "WARNING", "no worker line names the failed job"
    batch_id = mine[0]["batch_id"]
    assert len(batch_id) == 16
    # The forward's own warning carries the batch id, so the two lines can be joined.
    assert any(r.get("batch_id") == batch_id and "forward failed" in r["message"] for r in records)
