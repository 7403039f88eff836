"""Delivery under faults: a killed worker, a killed Redis, a batch near its time limit."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
import redis

from services.common.redis_server import RedisServer
from tests.conftest import IDLE_MODEL, TEST_MODEL
from tests.faults.conftest import MakeStack, fault_jpeg, record_figure
from tests.images import jpeg
from tests.integration.helpers import error_code, files, predict, submit, wait_jobs

pytestmark = pytest.mark.integration


def _stores(server: RedisServer, ids: list[str]) -> list[int]:
    client = redis.Redis.from_url(server.url)
    return [int(client.hget(f"vq:job:{i}", "stores") or 0) for i in ids]


def test_sigkilled_worker_loses_nothing_and_stores_each_result_once(
    make_stack: MakeStack, fault_redis: RedisServer
) -> None:
    stack = make_stack(VISIONQ_MAX_BATCH_SIZE="8")
    stack.start_api()
    ids: list[str] = []
    for r in range(4):  # queue everything first, so the worker is busy when killed
        ids += submit(stack.url, files(*[(f"{r}-{i}.jpg", jpeg(i, (96, 96))) for i in range(30)]))
    first = stack.start_worker(models=TEST_MODEL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if httpx.get(f"{stack.url}/v1/jobs/{ids[0]}").json()["status"] != "queued":
            break
        time.sleep(0.02)
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait()
    killed_at = time.monotonic()
    left = [i for i in ids if httpx.get(f"{stack.url}/v1/jobs/{i}").json()["status"] != "succeeded"]
    assert left, "the worker finished everything before it was killed; nothing tested"
    stack.start_worker(models=TEST_MODEL)
    records = wait_jobs(stack.url, ids, timeout=120)
    record_figure("sigkill_recovery_s", time.monotonic() - killed_at)
    assert [r["status"] for r in records] == ["succeeded"] * len(ids)
    assert any(r["timings"]["deliveries"] >= 2 for r in records)  # redelivery happened
    assert _stores(fault_redis, ids) == [1] * len(ids)  # and no result was written twice


def test_batch_at_nine_tenths_of_its_limit_runs_once(
    make_stack: MakeStack, fault_redis: RedisServer
) -> None:
    # Visibility 5 s > 3 x 1.5 s + wait: the guard's own arithmetic, at its edge.
    stack = make_stack(VISIONQ_VISIBILITY_TIMEOUT_S="5", VISIONQ_BATCH_TIME_LIMIT_S="1.5")
    worker = stack.start_with_worker(models=TEST_MODEL)
    resp = predict(stack.url, files(("slow.jpg", fault_jpeg("slow=1.35"))))
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["predictions"][0]["job_id"]
    time.sleep(6)  # past the visibility timeout: a second run would show now
    record = httpx.get(f"{stack.url}/v1/jobs/{job_id}").json()
    assert record["timings"]["deliveries"] == 1
    assert _stores(fault_redis, [job_id]) == [1]
    assert worker.alive()


def test_redis_killed_and_restarted(make_stack: MakeStack, fault_redis: RedisServer) -> None:
    stack = make_stack()
    stack.start_with_worker(models=TEST_MODEL)
    queued = submit(stack.url, files(*[(f"q{i}.jpg", jpeg(i, (96, 96))) for i in range(5)]),
                    model=IDLE_MODEL)  # fmt: skip
    time.sleep(1.5)  # one appendfsync everysec period
    fault_redis.kill()
    start = time.monotonic()
    resp = predict(stack.url, files(("down.jpg", jpeg(1, (96, 96)))))
    record_figure("redis_down_503_s", time.monotonic() - start)
    assert resp.status_code == 503
    assert error_code(resp) == "broker_unavailable"
    # A cold API process (first publish ever) must not hang either.
    cold = make_stack()
    cold.start_api()
    start = time.monotonic()
    assert predict(cold.url, files(("cold.jpg", jpeg(2, (96, 96))))).status_code == 503
    record_figure("redis_down_cold_api_503_s", time.monotonic() - start)
    fault_redis.restart()
    restarted = time.monotonic()
    first = predict(stack.url, files(("back.jpg", jpeg(3, (96, 96)))))
    assert first.status_code == 200, first.text  # the first request after recovery
    record_figure("redis_restart_first_result_s", time.monotonic() - restarted)
    for job_id in queued:  # queued jobs survived the kill -9 through the AOF
        assert httpx.get(f"{stack.url}/v1/jobs/{job_id}").json()["status"] == "queued"
    assert redis.Redis.from_url(fault_redis.url).llen(f"gpu.{IDLE_MODEL}") == len(queued)
    stack.start_worker(models=IDLE_MODEL)
    assert {r["status"] for r in wait_jobs(stack.url, queued, timeout=60)} == {"succeeded"}


def test_lost_message_is_published_again(make_stack: MakeStack, fault_redis: RedisServer) -> None:
    # kombu pops a message before it records it as unacked: a worker or Redis dying in
    # between loses the message. Simulate exactly that by dropping the queued message.
    stack = make_stack()
    stack.start_api()
    (job_id,) = submit(stack.url, files(("lost.jpg", jpeg(5, (96, 96)))), model=IDLE_MODEL)
    client = redis.Redis.from_url(fault_redis.url)
    assert client.delete(f"gpu.{IDLE_MODEL}") == 1
    stack.start_worker(models=IDLE_MODEL)
    (record,) = wait_jobs(stack.url, [job_id], timeout=60)
    assert record["status"] == "succeeded"
    assert record["timings"]["deliveries"] == 1
    assert client.zscore("vq:queued", job_id) is None  # claimed jobs leave the index
