"""Graceful shutdown: a /v1/predict that waits for its result survives SIGTERM of the API.

The API is started alone (no worker yet) with the default settings, so the request waits.
SIGTERM then stops the API taking new connections at once while the waiting request is
kept; a worker started afterwards runs the job, the request gets its 200, and only then
does the API exit (with one uvicorn process and with two, as the Kubernetes pod runs). A
second test proves the bound: with no worker at all, the API exits once
``VISIONQ_GRACEFUL_SHUTDOWN_TIMEOUT_S`` has passed, answering 504 with the job's id.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.common.jobs import job_key
from services.common.redis_server import RedisServer, free_port
from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.stack import Proc, Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def lone_api(models_file: Path, tmp_path: Path) -> Iterator[Stack]:
    """Its own Redis, so no other test's worker can take the job early."""
    server = RedisServer(port=0).start()
    stack = Stack(server.url, tmp_path, stack_env(models_file))
    try:
        yield stack
    finally:
        stack.stop_all()
        server.stop()


def _until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _answers(url: str) -> bool:
    """True when a new connection gets an answer from the API."""
    try:
        httpx.get(url + "/healthz", timeout=3)
    except httpx.TransportError:
        # Refused or reset (one process: its socket is closed), or never accepted (several:
        # the supervisor still holds the socket, but no process takes connections from it).
        return False
    return True


def _start_api(stack: Stack, workers: int) -> Proc:
    """`visionq api --workers N`; the Kubernetes manifest runs two processes per pod."""
    stack.api_port = free_port()
    args = ["api", "--host", "127.0.0.1", "--port", str(stack.api_port)]
    proc = stack._spawn("api", [*args, "--workers", str(workers)])
    _until(lambda: _answers(stack.url) or not proc.alive(), 60, "the API to listen")
    assert proc.alive(), proc.log_tail()
    return proc


@pytest.mark.parametrize("workers", [1, 2])
def test_waiting_predict_completes_across_sigterm(lone_api: Stack, workers: int) -> None:
    api = _start_api(lone_api, workers)
    answer: dict[str, httpx.Response | BaseException] = {}

    def post() -> None:
        files = {"file": ("cat.jpg", jpeg(3, (64, 64)), "image/jpeg")}
        data = {"model": TEST_MODEL, "top_k": "2"}
        try:
            answer["r"] = httpx.post(
                lone_api.url + "/v1/predict", files=files, data=data, timeout=120
            )
        except BaseException as exc:
            answer["r"] = exc

    client = threading.Thread(target=post, daemon=True)
    client.start()
    store = redis.Redis.from_url(lone_api.redis_url)
    queued = lambda: any(store.scan_iter(match=job_key("*"), count=100))  # noqa: E731
    _until(queued, 30, "the job record")

    api.popen.send_signal(signal.SIGTERM)
    # It stops accepting at once ...
    _until(lambda: not _answers(lone_api.url), 20, "the API to stop taking connections")
    # ... but keeps the waiting request, which no worker could have answered yet.
    assert api.alive() and "r" not in answer, api.log_tail()

    lone_api.start_worker(models=TEST_MODEL)
    client.join(timeout=120)
    result = answer.get("r")
    assert isinstance(result, httpx.Response), f"{result!r}\n{lone_api.logs()}"
    assert result.status_code == 200, result.text
    (prediction,) = result.json()["predictions"]
    assert prediction["filename"] == "cat.jpg" and len(prediction["top_k"]) == 2
    # uvicorn re-raises the SIGTERM it handled once it is done: "killed by SIGTERM", cleanly.
    assert api.popen.wait(timeout=30) in (0, -signal.SIGTERM), api.log_tail()
    assert "Application shutdown complete" in api.log_tail()


def test_shutdown_waits_no_longer_than_the_bound(lone_api: Stack) -> None:
    # No worker ever comes: the request would wait its full 60 s; the bound cuts it short.
    lone_api.env["VISIONQ_GRACEFUL_SHUTDOWN_TIMEOUT_S"] = "1"
    api = lone_api.start_api()
    answer: dict[str, BaseException | httpx.Response] = {}

    def post() -> None:
        files = {"file": ("cat.jpg", jpeg(4, (64, 64)), "image/jpeg")}
        try:
            answer["r"] = httpx.post(
                lone_api.url + "/v1/predict", files=files, data={"timeout": "60"}, timeout=90
            )
        except httpx.HTTPError as exc:
            answer["r"] = exc

    client = threading.Thread(target=post, daemon=True)
    client.start()
    store = redis.Redis.from_url(lone_api.redis_url)
    _until(lambda: any(store.scan_iter(match=job_key("*"), count=100)), 30, "the job record")
    api.popen.send_signal(signal.SIGTERM)
    # Far less than the request's 60 s: the 1 s bound (plus start-up noise) ended it.
    assert api.popen.wait(timeout=30) in (0, -signal.SIGTERM), api.log_tail()
    assert "timeout graceful shutdown exceeded" in api.log_tail()
    client.join(timeout=30)
    # Cut short as a timeout that names the job, which stays queued for a poll.
    result = answer.get("r")
    assert isinstance(result, httpx.Response), repr(result)
    assert result.status_code == 504, result.text
    error = result.json()["error"]
    assert error["code"] == "timeout" and len(error["job_ids"]) == 1
    assert store.hget(job_key(error["job_ids"][0]), "status") == b"queued"
