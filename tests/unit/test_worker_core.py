"""The worker core against a real redis-server: submit, claim, finish, cancel, sweep.

Each Lua script of services/common/protocol is called through its typed wrapper, on a
throwaway redis-server on a free loopback port (never the one on 6379).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from services.common.jobs import JobRecord, Status
from services.common.protocol.keys import (
    DONE_CHANNEL,
    QUEUED_INDEX,
    image_key,
    job_key,
    queue_name,
)
from services.common.protocol.scripts import NewJob, cancel_jobs, submit_jobs
from services.common.redis_server import RedisServer
from services.gpu_worker.store import JobStore, Outcome

MODEL = "m"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer(port=0).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(server.url)
    c.flushall()
    yield c
    c.close()


def _submit(url: str, ids: list[str], *, max_depth: int = 100, deadline: float | None = None,
            params: str = '{"top_k":3}') -> int:  # fmt: skip
    async def go() -> int:
        async with aioredis.Redis.from_url(url) as c:
            return await submit_jobs(
                c,
                queue=queue_name(MODEL),
                jobs=[NewJob(i, f"{i}.jpg", b"img-" + i.encode()) for i in ids],
                max_depth=max_depth,
                job_ttl_s=600,
                model=MODEL,
                created=time.time(),
                params_json=params,
                deadline=deadline,
                lane="interactive",
            )

    return asyncio.run(go())


def _store(client: redis.Redis, max_deliveries: int = 3) -> JobStore:
    return JobStore(client, result_ttl_s=60, max_deliveries=max_deliveries)


def test_submit_stores_records_images_and_the_index(server: RedisServer, client: redis.Redis):
    assert _submit(server.url, ["a", "b"]) == 0
    record = client.hgetall(job_key("a"))
    assert record[b"status"] == b"queued" and record[b"params"] == b'{"top_k":3}'
    assert b"top_k" not in record  # params are opaque JSON to the scripts
    assert client.get(image_key("b")) == b"img-b"
    assert client.zcard(QUEUED_INDEX) == 2


def test_submit_refuses_over_the_depth_and_writes_nothing(server: RedisServer, client):
    client.rpush(queue_name(MODEL), "x", "y")
    assert _submit(server.url, ["a"], max_depth=2) == -1
    assert not client.exists(job_key("a"), image_key("a"))


def test_submit_refusals_and_replays_leave_no_image(server: RedisServer, client):
    # The images are written in the submit's pipeline before the script decides.
    client.rpush(queue_name(MODEL), "x", "y")
    assert _submit(server.url, ["a", "b"], max_depth=3) == -1
    assert not client.keys("vq:img:*")
    client.delete(queue_name(MODEL))

    async def twice() -> list[int | bytes]:
        async with aioredis.Redis.from_url(server.url) as c:
            return [
                await submit_jobs(
                    c,
                    queue=queue_name(MODEL),
                    jobs=[NewJob(job_id, "f.jpg", b"img")],
                    max_depth=100,
                    job_ttl_s=600,
                    model=MODEL,
                    created=time.time(),
                    params_json="{}",
                    deadline=None,
                    lane="interactive",
                    idempotency=("vq:idem:test", "first"),
                )
                for job_id in ("c", "d")
            ]

    first, replay = asyncio.run(twice())
    assert first == 0 and replay == b"first"
    assert client.exists(image_key("c")) and not client.exists(image_key("d"), job_key("d"))


def test_scripts_reload_after_a_script_flush(server: RedisServer, client: redis.Redis):
    # A restarted Redis has no scripts cached: the pipelines load them and go on.
    client.script_flush()
    assert _submit(server.url, ["a"]) == 0
    client.script_flush()
    (claim,) = _store(client).claim(["a"], "w1")
    assert claim.verdict == "run" and claim.image == b"img-a"
    client.script_flush()
    assert _store(client).finish([Outcome("a", Status.SUCCEEDED, result={"x": 1})], "w1") == 1


def test_claim_runs_counts_and_hands_back_params(server: RedisServer, client: redis.Redis):
    _submit(server.url, ["a", "b"])
    claims = _store(client).claim(["a", "b"], "w1")
    assert [c.verdict for c in claims] == ["run", "run"]
    assert claims[0].image == b"img-a" and claims[0].params == '{"top_k":3}'
    assert claims[0].deliveries == 1
    assert client.hget(job_key("a"), "status") == b"running"
    assert client.zcard(QUEUED_INDEX) == 0


def test_redelivered_job_is_suspect_then_claimed_alone(server: RedisServer, client):
    _submit(server.url, ["a"])
    store = _store(client)
    store.claim(["a"], "w1")
    (again,) = store.claim(["a"], "w2")
    assert again.verdict == "suspect" and again.deliveries == 1
    (solo,) = store.claim(["a"], "w2", solo=True)
    assert solo.verdict == "run" and solo.deliveries == 2


def test_poison_job_ends_worker_lost(server: RedisServer, client: redis.Redis):
    _submit(server.url, ["a"])
    store = _store(client, max_deliveries=1)
    store.claim(["a"], "w1")
    (last,) = store.claim(["a"], "w2", solo=True)
    assert last.verdict == "worker_lost"
    record = JobRecord.from_hash("a", client.hgetall(job_key("a")))
    assert record.status == "failed" and record.error and record.error["code"] == "worker_lost"
    assert not client.exists(image_key("a"))


def test_expired_deadline_and_missing_image(server: RedisServer, client: redis.Redis):
    _submit(server.url, ["late"], deadline=time.time() - 1)
    _submit(server.url, ["gone"])
    client.delete(image_key("gone"))
    late, gone = _store(client).claim(["late", "gone"], "w1")
    assert late.verdict == "expired"
    assert client.hget(job_key("late"), "status") == b"expired"
    assert gone.verdict == "skip"
    assert json.loads(client.hget(job_key("gone"), "error") or b"{}")["code"] == "image_missing"


def test_finish_stores_once_drops_images_and_publishes(server: RedisServer, client):
    _submit(server.url, ["a", "b"])
    store = _store(client)
    store.claim(["a", "b"], "w1")
    pubsub = client.pubsub()
    pubsub.subscribe(DONE_CHANNEL)
    pubsub.get_message(timeout=1)
    stored = store.finish(
        [
            Outcome("a", Status.SUCCEEDED, result={"x": 1}, timings={"batch_size": 2}),
            Outcome("b", Status.FAILED, error={"code": "invalid_image", "message": "bad"}),
        ],
        "w1",  # the claims' owner: only it may store (issue 9's fencing)
    )
    assert stored == 2
    a = JobRecord.from_hash("a", client.hgetall(job_key("a")))
    b = JobRecord.from_hash("b", client.hgetall(job_key("b")))
    assert (a.status, a.result, a.timings) == ("succeeded", {"x": 1}, {"batch_size": 2})
    assert b.status == "failed" and b.error == {"code": "invalid_image", "message": "bad"}
    assert b.result is None
    assert client.hget(job_key("a"), "stores") == b"1"
    assert not client.exists(image_key("a"), image_key("b"))
    assert 0 < client.ttl(job_key("a")) <= 60
    published: dict[str, JobRecord | None] = {}
    deadline = time.monotonic() + 5
    while len(published) < 2 and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=1)
        if msg and msg["type"] == "message":
            # The notice carries the record the waiting request answers with.
            job_id, _, payload = msg["data"].partition(b"\n")
            published[job_id.decode()] = JobRecord.from_notice(job_id.decode(), payload)
    assert published == {"a": a, "b": b}
    # Claiming an ended job again (a redelivery after the result) just skips it.
    (again,) = store.claim(["a"], "w2")
    assert again.verdict == "skip"


def test_large_record_is_announced_by_id_alone(server: RedisServer, client: redis.Redis):
    # Every API process gets every notice: a large result is read back by its waiter instead.
    _submit(server.url, ["big"])
    store = _store(client)
    store.claim(["big"], "w1")
    pubsub = client.pubsub()
    pubsub.subscribe(DONE_CHANNEL)
    pubsub.get_message(timeout=1)
    store.finish([Outcome("big", Status.SUCCEEDED, result={"x": "y" * 20_000})], "w1")
    msg = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (msg and msg["type"] == "message"):
        msg = pubsub.get_message(timeout=1)
    assert msg is not None and msg["data"] == b"big"


def test_cancel_only_queued_jobs(server: RedisServer, client: redis.Redis):
    _submit(server.url, ["q", "r"])
    _store(client).claim(["r"], "w1")

    async def go() -> list[int]:
        async with aioredis.Redis.from_url(server.url) as c:
            return await cancel_jobs(c, ["q", "r", "nope"], result_ttl_s=60)

    assert asyncio.run(go()) == [1, 0, -1]
    assert client.hget(job_key("q"), "status") == b"cancelled"
    assert not client.exists(image_key("q"))
    assert client.zscore(QUEUED_INDEX, "q") is None


def test_sweeper_republishes_a_lost_message(server: RedisServer, client: redis.Redis):
    from services.common.celery_app import make_celery
    from services.common.settings import WorkerSettings
    from services.gpu_worker.sweeper import LostMessageSweeper

    _submit(server.url, ["lost"])
    # Backdate the index as if the job waited past the grace period, its message gone.
    client.zadd(QUEUED_INDEX, {"lost": time.time() - 100})
    app = make_celery(WorkerSettings(redis_url=server.url))
    sweeper = LostMessageSweeper(client, app, grace_s=10, interval_s=1, owner="t")
    assert sweeper.sweep() == ["lost"]
    messages = client.lrange(queue_name(MODEL), 0, -1)
    assert len(messages) == 1 and b"lost" in messages[0]
    assert client.zscore(QUEUED_INDEX, "lost") is not None  # still waiting for a claim


def test_a_claimed_job_whose_image_vanished_ends_image_missing() -> None:
    from pydantic import BaseModel

    from services.common.protocol.scripts import ClaimReply
    from services.gpu_worker.prepare import WorkItem, build_prepared

    class NoParams(BaseModel):
        pass

    gone = ClaimReply(verdict="image_missing", deliveries=1, created=None, params="", image=b"")
    prepared, skipped = build_prepared(
        MODEL, [WorkItem("j1", MODEL)], [gone], lambda d, p: d, NoParams, None, 0.0
    )
    ((item, outcome),) = prepared.ended
    assert item.job_id == "j1" and not skipped and not prepared.run_items
    assert outcome.error is not None and outcome.error["code"] == "image_missing"


def test_finish_acks_the_batch_messages_with_their_results(server: RedisServer, client):
    from services.common.protocol.scripts import AckKeys
    from services.gpu_worker import acks

    _submit(server.url, ["a", "b"])
    store = _store(client)
    store.acks = AckKeys("unacked_index", "unacked", "vq:held:w1")
    for tag in ("t-a", "t-b", "t-other"):
        client.zadd("unacked_index", {tag: time.time()})
        client.hset("unacked", tag, "{}")
        client.sadd("vq:held:w1", tag)
    store.claim(["a", "b"], "w1")
    # "b" is no longer this worker's: its result is refused, its message acked all the same.
    client.hset(job_key("b"), "worker", "w2")
    outcomes = [Outcome(j, Status.SUCCEEDED, result={"x": 1}) for j in ("a", "b")]
    assert store.finish(outcomes, "w1", tags=["t-a", "t-b"]) == 1
    assert client.zrange("unacked_index", 0, -1) == [b"t-other"]
    assert client.hkeys("unacked") == [b"t-other"]
    assert client.smembers("vq:held:w1") == {b"t-other"}
    # Without tags nothing of kombu's is touched.
    assert store.finish([Outcome("a", Status.SUCCEEDED)], "w1") == 0
    assert client.hkeys("unacked") == [b"t-other"]
    acks.settle(["t-a", ""])
    assert acks.take_settled("t-a") and not acks.take_settled("t-a")
    assert not acks.take_settled("")


def test_submit_enqueues_each_message_with_its_job_and_the_trace_carrier(
    server: RedisServer, client: redis.Redis
) -> None:
    async def go() -> int | bytes:
        async with aioredis.Redis.from_url(server.url) as c:
            return await submit_jobs(
                c,
                queue=queue_name(MODEL),
                jobs=[NewJob(j, f"{j}.jpg", b"img", message=f"msg-{j}") for j in ("a", "b")],
                max_depth=100,
                job_ttl_s=600,
                model=MODEL,
                created=time.time(),
                params_json="{}",
                deadline=None,
                lane="interactive",
                carrier={"traceparent": "00-abc-def-01"},
            )

    assert asyncio.run(go()) == 0
    # kombu's order: LPUSH, consumed from the right (BRPOP): first in, first out.
    assert client.lrange(queue_name(MODEL), 0, -1) == [b"msg-b", b"msg-a"]
    assert client.hget(job_key("a"), "traceparent") == b"00-abc-def-01"
    assert client.hget(job_key("b"), "status") == b"queued"
