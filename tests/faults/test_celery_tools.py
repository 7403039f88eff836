"""Celery's own command line against real visionq workers: inspect, and a remote shutdown.

The commands are the documented ones (``celery -A services.common.celery_app --broker URL
...``), run as real processes; a warm shutdown sent that way must behave like SIGTERM: the
batch in the forward pass finishes, nothing else is lost, nothing runs twice.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_MODEL
from tests.faults.conftest import MakeStack, fault_jpeg, release_stall
from tests.images import jpeg
from tests.integration.helpers import files, submit, wait_jobs
from tests.integration.stack import ROOT, Stack

pytestmark = pytest.mark.integration


def celery(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A services.common.celery_app --broker URL ARGS`` as an operator types it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    cmd = [sys.executable, "-m", "celery", "-A", "services.common.celery_app"]
    return subprocess.run(
        [*cmd, "--broker", stack.redis_url, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def inspect(stack: Stack, what: str, worker: str = "") -> dict[str, Any]:
    """``celery inspect WHAT --json``: {worker hostname: its answer}."""
    # Named, it returns on that worker's reply instead of waiting out the timeout.
    named = ["--destination", worker] if worker else []
    done = celery(stack, "inspect", what, "--json", "--timeout", "5", *named)
    assert done.returncode == 0, f"inspect {what}: {done.stdout}\n{done.stderr}"
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def wait_status(stack: Stack, job_id: str, status: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{stack.url}/v1/jobs/{job_id}").json()["status"] != status:
        assert time.monotonic() < deadline, f"{job_id} never {status}"
        time.sleep(0.05)


def test_inspect_then_remote_warm_shutdown_loses_nothing(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack(VISIONQ_VISIBILITY_TIMEOUT_S="70", VISIONQ_BATCH_TIME_LIMIT_S="20")
    worker = stack.start_with_worker(models=TEST_MODEL)

    # The node name the worker gives itself (services/gpu_worker/main.py); asked by name,
    # inspect returns on its reply instead of waiting out the timeout. The README test runs
    # the unnamed broadcast form.
    hostname = f"visionq-cpu-0-{worker.popen.pid}@{socket.gethostname()}"
    stats = inspect(stack, "stats", hostname)
    assert list(stats) == [hostname], stats
    info = stats[hostname]
    assert info["pid"] == worker.popen.pid
    assert info["pool"]["max-concurrency"] == 2 * 16  # task waiters: two batches (issue 9)

    # One slow batch in the forward pass, then more jobs behind it. It lasts until the
    # worker has been told to shut down (at most 15 s).
    release = tmp_path / "release"
    slow = submit(stack.url, files(("slow.jpg", fault_jpeg("slow=15", release=release))))
    wait_status(stack, slow[0], "running")
    others = submit(stack.url, files(*[(f"{i}.jpg", jpeg(i, (96, 96))) for i in range(6)]))
    ids = slow + others
    with ThreadPoolExecutor(2) as pool:
        active, reserved = pool.map(lambda what: inspect(stack, what, hostname)[hostname],
                                    ["active", "reserved"])  # fmt: skip
    held = {task["id"] for task in active} | {task["id"] for task in reserved}
    assert slow[0] in {task["id"] for task in active}  # task ids are job ids
    assert all(task["name"] == "visionq.infer" for task in active)
    assert held <= set(ids)

    # The shutdown must reach the worker mid-forward: the slow batch lasts until it has.
    assert httpx.get(f"{stack.url}/v1/jobs/{slow[0]}").json()["status"] == "running"
    done = celery(stack, "control", "shutdown", "--destination", hostname, "--timeout", "2")
    # Celery's shutdown command never replies (the worker raises WorkerShutdown while
    # handling it), so the CLI always ends with "No nodes replied" (exit 69).
    assert "No nodes replied" in done.stderr, f"{done.stdout}\n{done.stderr}"
    # The next worker (a supervisor's replacement) starts now: its start-up overlaps the
    # leaving one's; it runs whatever the leaving worker hands back.
    stack.start_worker(1, models=TEST_MODEL)
    deadline = time.monotonic() + 30
    while "Got shutdown from remote" not in worker.log_tail(20_000):
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.1)
    assert httpx.get(f"{stack.url}/v1/jobs/{slow[0]}").json()["status"] == "running"
    release_stall(release)
    # Like SIGTERM: a clean exit after the batch in the forward pass has been stored.
    assert worker.popen.wait(60) == 0
    assert httpx.get(f"{stack.url}/v1/jobs/{slow[0]}").json()["status"] == "succeeded"
    records = wait_jobs(stack.url, ids, timeout=90)
    assert [r["status"] for r in records] == ["succeeded"] * len(ids)
    assert records[0]["timings"]["deliveries"] == 1  # not run twice
