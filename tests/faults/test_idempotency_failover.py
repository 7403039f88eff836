"""An Idempotency-Key holds across worker failover: the retry of a request whose worker died
mid-batch creates nothing, and the first request's jobs run to the end exactly once."""

from __future__ import annotations

import signal
import time
import uuid

import httpx
import pytest
import redis

from services.common.redis_server import RedisServer
from tests.conftest import TEST_MODEL
from tests.faults.conftest import MakeStack, fault_jpeg
from tests.images import jpeg
from tests.integration.helpers import files, wait_jobs

pytestmark = pytest.mark.integration


def test_retry_after_a_worker_died_mid_batch_makes_nothing_new(
    make_stack: MakeStack, fault_redis: RedisServer
) -> None:
    stack = make_stack()
    first_worker = stack.start_with_worker(models=TEST_MODEL)
    key = uuid.uuid4().hex
    parts = files(("slow.jpg", fault_jpeg("slow=1.0")), ("b.jpg", jpeg(1, (96, 96))))

    def post() -> httpx.Response:
        return httpx.post(
            f"{stack.url}/v1/jobs",
            files=parts,
            data={"model": TEST_MODEL},
            headers={"Idempotency-Key": key},
            timeout=30,
        )

    first = post()
    assert first.status_code == 202, first.text
    ids = [j["job_id"] for j in first.json()["jobs"]]
    deadline = time.monotonic() + 60
    while httpx.get(f"{stack.url}/v1/jobs/{ids[0]}").json()["status"] != "running":
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.02)
    first_worker.popen.send_signal(signal.SIGKILL)  # mid-batch: the slow forward pass
    first_worker.popen.wait()
    client = redis.Redis.from_url(fault_redis.url)
    jobs_before = sum(1 for _ in client.scan_iter("vq:job:*"))

    retry = post()  # the client never saw the first answer and sends the request again
    assert retry.status_code == 202, retry.text
    assert [j["job_id"] for j in retry.json()["jobs"]] == ids
    stack.start_worker(models=TEST_MODEL)
    records = wait_jobs(stack.url, ids, timeout=120)
    assert [r["status"] for r in records] == ["succeeded"] * len(ids)
    assert records[0]["timings"]["deliveries"] >= 2  # it really was redelivered
    assert sum(1 for _ in client.scan_iter("vq:job:*")) == jobs_before
    assert [int(client.hget(f"vq:job:{i}", "stores") or 0) for i in ids] == [1] * len(ids)
    again = post()  # and once they ended, the key still answers with them
    assert [j["job_id"] for j in again.json()["jobs"]] == ids
