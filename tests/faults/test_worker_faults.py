"""Worker faults: poison jobs, SIGTERM mid-batch, out-of-memory splitting, deadlines."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from services.common.redis_server import free_port
from tests.conftest import IDLE_MODEL, TEST_MODEL
from tests.faults.conftest import MakeStack, fault_jpeg
from tests.images import jpeg
from tests.integration.helpers import files, predict, submit, wait_jobs
from tests.integration.stack import Proc, Stack

pytestmark = pytest.mark.integration


def _supervise(stack: Stack, ids: list[str], slots: list[Proc], code: int | None) -> int:
    """Restart each slot's worker when it exits, as a supervisor would, until every job
    has ended; the exits seen. ``code``: the exit status every one of them must have.

    Two slots: a replacement starts while the other slot's worker serves, so the job that
    kills workers is delivered again without waiting for a start-up each time.
    """
    deaths = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        records = [httpx.get(f"{stack.url}/v1/jobs/{i}").json() for i in ids]
        if all(r["status"] in ("succeeded", "failed") for r in records):
            break
        for at, worker in enumerate(slots):
            if not worker.alive():
                deaths += 1
                assert deaths <= 3, "the job was run more than 3 times"
                if code is not None:
                    assert worker.popen.returncode == code
                slots[at] = stack.start_worker(at, models=TEST_MODEL)
        time.sleep(0.2)
    return deaths


def test_poison_job_fails_worker_lost_and_spares_the_others(make_stack: MakeStack) -> None:
    stack = make_stack()
    stack.start_api()
    good = [(f"g{i}.jpg", jpeg(i, (96, 96))) for i in range(6)]
    ids = submit(stack.url, files(("poison.jpg", fault_jpeg("kill")), *good))
    slots = [stack.start_worker(i, models=TEST_MODEL) for i in range(2)]
    deaths = _supervise(stack, ids, slots, None)
    records = wait_jobs(stack.url, ids, timeout=5)
    poison, others = records[0], records[1:]
    assert poison["status"] == "failed"
    assert poison["error"]["code"] == "worker_lost"
    assert [r["status"] for r in others] == ["succeeded"] * len(others)
    assert all(r["timings"]["deliveries"] <= 2 for r in others)
    assert deaths == 3  # delivered three times, then refused without running
    assert all(worker.alive() for worker in slots)


def test_sigterm_mid_batch_finishes_the_batch(make_stack: MakeStack) -> None:
    stack = make_stack(VISIONQ_VISIBILITY_TIMEOUT_S="15", VISIONQ_BATCH_TIME_LIMIT_S="4")
    worker = stack.start_with_worker(models=TEST_MODEL)
    others = [(f"{i}.jpg", jpeg(i, (96, 96))) for i in range(4)]
    ids = submit(stack.url, files(("slow.jpg", fault_jpeg("slow=3")), *others))
    deadline = time.monotonic() + 30
    while httpx.get(f"{stack.url}/v1/jobs/{ids[0]}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.popen.send_signal(signal.SIGTERM)  # warm shutdown while the slow batch runs
    assert worker.popen.wait(60) == 0
    # The running batch finished before the worker left; jobs it had not started were
    # handed back, and a new worker completes them.
    assert httpx.get(f"{stack.url}/v1/jobs/{ids[0]}").json()["status"] == "succeeded"
    stack.start_worker(models=TEST_MODEL)
    records = wait_jobs(stack.url, ids, timeout=90)
    assert [r["status"] for r in records] == ["succeeded"] * len(ids)
    assert records[0]["timings"]["deliveries"] == 1  # not run twice


def test_out_of_memory_splits_the_batch(make_stack: MakeStack) -> None:
    stack = make_stack(VISIONQ_MAX_WAIT_MS="300")
    stack.worker_metrics_port = free_port()
    metrics_env = {"VISIONQ_METRICS_PORT": str(stack.worker_metrics_port)}
    stack.start_with_worker(models=TEST_MODEL, extra=metrics_env)
    normal = [(f"{i}.jpg", jpeg(i, (96, 96))) for i in range(4)]
    parts = files(
        ("always.jpg", fault_jpeg("oom")), ("big.jpg", fault_jpeg("oom_batch", 1)), *normal
    )
    # An idle worker runs a lone job at once, and a failed forward is instant: keep it busy
    # so that the request's six files gather into one batch behind a slow one (under the
    # tuned 1.2 s batch time limit).
    (slow,) = submit(stack.url, files(("slow.jpg", fault_jpeg("slow=0.6"))))
    deadline = time.monotonic() + 30
    while httpx.get(f"{stack.url}/v1/jobs/{slow}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    resp = predict(stack.url, parts)
    assert resp.status_code == 200, resp.text + stack.logs()[-6000:]
    preds = resp.json()["predictions"]
    assert preds[0]["error"]["code"] == "out_of_memory"  # fails even alone
    assert all("top_k" in p for p in preds[1:])  # fit once the batch was split
    metrics = httpx.get(f"http://127.0.0.1:{stack.worker_metrics_port}/metrics").text
    oom = [line for line in metrics.splitlines() if line.startswith("visionq_oom_total{")]
    assert oom and float(oom[0].split()[-1]) >= 2
    after = predict(stack.url, files(("next.jpg", jpeg(9, (96, 96)))))
    assert after.status_code == 200
    assert after.json()["predictions"][0]["timings"]["deliveries"] == 1


def test_a_sticky_cuda_error_ends_the_worker_and_spares_its_batch_mates(
    make_stack: MakeStack,
) -> None:
    # A CUDA context broken by one batch breaks every later one: the worker must leave (its
    # jobs are redelivered) instead of failing the batch item by item as inference_error.
    stack = make_stack(VISIONQ_MAX_WAIT_MS="300")
    worker = stack.start_with_worker(models=TEST_MODEL)
    good = [(f"g{i}.jpg", jpeg(i, (96, 96))) for i in range(3)]
    ids = submit(stack.url, files(("bad.jpg", fault_jpeg("cuda_error")), *good))
    assert worker.popen.wait(90) == 70  # left at once; not a crash loop of its own making
    statuses = [httpx.get(f"{stack.url}/v1/jobs/{i}").json() for i in ids]
    assert not any(r["status"] == "failed" for r in statuses), statuses
    # Redelivered, every job of the dead batch is suspect and runs alone: the bad one
    # takes down each worker that runs it (exit 70 again) until it is refused as
    # worker_lost; its batch-mates succeed on the restarted workers.
    slots = [stack.start_worker(i, models=TEST_MODEL) for i in range(2)]
    _supervise(stack, ids, slots, 70)
    records = wait_jobs(stack.url, ids, timeout=5)
    assert [r["status"] for r in records[1:]] == ["succeeded"] * len(good)
    assert records[0]["error"]["code"] == "worker_lost"


def test_job_past_its_deadline_is_expired_not_run(make_stack: MakeStack) -> None:
    stack = make_stack()
    stack.start_api()
    # No worker serves the idle model yet: the client's wait runs out first.
    resp = predict(stack.url, files(("late.jpg", jpeg(1, (96, 96)))), model=IDLE_MODEL, timeout=1)
    assert resp.status_code == 504
    (job_id,) = resp.json()["error"]["job_ids"]
    stack.start_worker(models=IDLE_MODEL)
    (record,) = wait_jobs(stack.url, [job_id], timeout=90)
    assert record["status"] == "expired"
    assert record["error"]["code"] == "expired"
