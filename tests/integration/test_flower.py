"""Proof against a real Flower: it sees the worker online and every job as a task.

A real redis-server, the real API and one real CPU worker with events on (as the compose
file runs them next to Flower) run as subprocesses, and Flower runs as a real process
(``celery -A services.common.celery_app flower``) on a loopback port with its
unauthenticated API on. Everything is read through Flower's HTTP API, which knows only
what the worker's Celery events told it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from services.common.redis_server import RedisServer, free_port
from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.helpers import files, submit, wait_jobs
from tests.integration.stack import ROOT, Stack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("flower") is None,
        reason="flower is not installed (it is pinned in the dev extra: pip install flower)",
    ),
]

T = TypeVar("T")


def corrupt_jpeg(seed: int) -> bytes:
    """A JPEG that passes the API's header and trailer checks but fails to decode."""
    data = bytearray(jpeg(seed))
    data[len(data) // 2 : len(data) // 2 + 500] = b"\xff" * 500
    return bytes(data)


class Flower:
    """A real Flower process on a free loopback port, ended by its PID."""

    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "flower.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONQ_", "FLOWER_"))}
        env.update(VISIONQ_REDIS_URL=redis_url, FLOWER_UNAUTHENTICATED_API="true")
        args = ["-A", "services.common.celery_app", "flower", "--address=127.0.0.1"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", *args, f"--port={self.port}"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, **params: str) -> Any:
        resp = httpx.get(self.url + path, params=params, timeout=10)
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text[:300]}"
        return resp.json()

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower exited:\n{self.log.read_text()[-3000:]}")
            try:
                found = probe()
            except (httpx.HTTPError, AssertionError):
                found = None
            if found:
                return found
            time.sleep(0.3)
        raise AssertionError(
            f"flower: timed out waiting for {what}\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def watched(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(flower, stack, worker hostname): the stack with Flower watching it from the start."""
    tmp = tmp_path_factory.mktemp("flower")
    server = RedisServer(port=0).start()
    # Events are off by default (they cost CPU); on, as the compose file sets them for Flower.
    stack = Stack(server.url, tmp, stack_env(models_file, VISIONQ_CELERY_EVENTS="1"))
    flower: Flower | None = None
    try:
        stack.start_api()
        stack.start_worker(models=TEST_MODEL)
        flower = Flower(server.url, tmp)
        stack.wait_ready()
        online = flower.wait_for(
            "the worker online",
            lambda: [n for n, up in flower.get("/api/workers", status="true").items() if up],
        )
        assert len(online) == 1, online
        yield flower, stack, online[0]
    finally:
        if flower is not None:
            flower.stop()
        stack.stop_all()
        server.stop()


def test_jobs_show_as_tasks_with_their_states(watched: Any) -> None:
    flower, stack, hostname = watched
    parts = [(f"{i}.jpg", jpeg(40 + i, (96, 96))) for i in range(4)]
    ids = submit(stack.url, files(*parts, ("corrupt.jpg", corrupt_jpeg(3))))
    # A deadline of 1 ms has passed before any worker can claim the job: it ends expired.
    late = submit(stack.url, files(("late.jpg", jpeg(60, (96, 96)))), timeout="0.001")
    records = wait_jobs(stack.url, ids + late)
    assert [r["status"] for r in records] == ["succeeded"] * 4 + ["failed", "expired"]

    def all_ready() -> dict[str, Any] | None:
        tasks: dict[str, Any] = flower.get("/api/tasks")
        mine = {i: tasks[i] for i in ids + late if i in tasks}
        ready = ("SUCCESS", "FAILURE", "REVOKED")
        done = len(mine) == len(ids) + 1 and all(t["state"] in ready for t in mine.values())
        return mine if done else None

    tasks = flower.wait_for("every job as a finished task", all_ready)
    # Task ids are job ids; failed jobs are FAILURE, an expired one REVOKED (as Celery's own
    # expiry); each task names its worker and has a runtime.
    assert {i: t["state"] for i, t in tasks.items()} == {
        **dict.fromkeys(ids[:4], "SUCCESS"),
        ids[4]: "FAILURE",
        late[0]: "REVOKED",
    }
    revoked = tasks.pop(late[0])
    assert revoked["revoked"] and revoked["worker"] == hostname
    # Every message was acked, FAILURE and REVOKED ones too: nothing will come back.
    client = redis.Redis.from_url(stack.redis_url)
    flower.wait_for("every message acked", lambda: client.hlen("unacked") == 0 or None)
    for job_id, task in tasks.items():
        assert task["uuid"] == job_id
        assert task["name"] == "visionq.infer"
        assert task["worker"] == hostname
        assert TEST_MODEL in task["args"]
        assert task["received"] <= task["started"]
    for job_id in ids[:4]:
        assert tasks[job_id]["runtime"] > 0
    # Celery's task-failed event carries no runtime; Flower shows when it started and failed.
    assert tasks[ids[4]]["failed"] >= tasks[ids[4]]["started"]
    assert "invalid_image" in tasks[ids[4]]["exception"]
    assert all(tasks[i]["result"] == "'succeeded'" for i in ids[:4])


def test_worker_counts_what_it_processed(watched: Any) -> None:
    flower, stack, hostname = watched
    before = _counts(flower, hostname)
    ids = submit(stack.url, files(("a.jpg", jpeg(70, (96, 96))), ("bad.jpg", corrupt_jpeg(4))))
    wait_jobs(stack.url, ids)

    def counted() -> dict[str, int] | None:
        now = _counts(flower, hostname)
        return (
            now
            if now["task-received"] - before["task-received"] == 2
            and now["task-failed"] > before["task-failed"]
            else None
        )

    after = flower.wait_for("the dashboard's counts", counted)
    assert after["status"] is True
    assert after["task-succeeded"] - before["task-succeeded"] == 1
    assert after["task-failed"] - before["task-failed"] == 1


def _counts(flower: Flower, hostname: str) -> dict[str, Any]:
    # What the dashboard's worker table shows (online, processed, failed, succeeded).
    rows = {row["hostname"]: row for row in flower.get("/workers", json="1")["data"]}
    row = rows[hostname]
    return {
        "status": row["status"],
        **{k: int(row.get(k, 0)) for k in ("task-received", "task-succeeded", "task-failed")},
    }
