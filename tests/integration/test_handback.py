"""Hand-back, reaper, fencing and the sweeper lock against a real redis-server.

Messages are published and fetched by real kombu channels (visionq's transport), so the
``unacked`` entries and held sets are the ones a worker writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from kombu import Connection, Exchange, Queue

from services.common.celery_app import make_celery
from services.common.jobs import QUEUED_INDEX, Status, worker_key
from services.common.redis_server import RedisServer
from services.common.settings import WorkerSettings
from services.gpu_worker.broker import TRANSPORT_PATH, record_holdings
from services.gpu_worker.handback import (
    UNACKED_KEY,
    WORKERS_INDEX,
    HandBack,
    fence_key,
    held_key,
)
from services.gpu_worker.heartbeat import Heartbeat
from services.gpu_worker.reaper import Reaper
from services.gpu_worker.store import JobStore, Outcome
from services.gpu_worker.sweeper import LostMessageSweeper

pytestmark = pytest.mark.integration

QUEUE = "gpu.m"


@pytest.fixture()
def server() -> Iterator[RedisServer]:
    srv = RedisServer(port=0).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


@contextmanager
def _fetched(url: str, worker: str, bodies: list[str]) -> Iterator[list[str]]:
    """Publish ``bodies`` on QUEUE and hold them all unacked as ``worker``; their tags."""
    record_holdings(held_key(worker))
    queue = Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE)
    conn = Connection(url, transport=TRANSPORT_PATH)
    try:
        producer = conn.Producer()
        for body in bodies:
            producer.publish(body, exchange=queue.exchange, routing_key=QUEUE,
                             declare=[queue], headers={"id": body})  # fmt: skip
        channel = conn.channel()
        tags = []
        for _ in bodies:
            message = channel.basic_get(QUEUE)
            assert message is not None
            tags.append(str(message.delivery_tag))
        yield tags
    finally:
        conn.release()  # a real worker that died would not; a leftover test must not leak
        record_holdings(None)


def test_held_messages_go_back_once_to_the_queue_head(
    server: RedisServer, client: redis.Redis
) -> None:
    with _fetched(server.url, "w1", ["a", "b", "c"]) as tags:
        _check_restore(client, tags)


def _check_restore(client: redis.Redis, tags: list[str]) -> None:
    assert client.scard(held_key("w1")) == 3
    assert client.hlen(UNACKED_KEY) == 3
    client.lpush(QUEUE, json.dumps({"headers": {"id": "later"}}))  # a message behind them
    handback = HandBack(client)
    restored = handback.restore_held("w1", keep_jobs={"b"})
    assert sorted(restored) == ["a", "c"]
    assert client.hlen(UNACKED_KEY) == 1  # b is still held: its batch is running
    assert client.smembers(held_key("w1")) == {tags[1].encode()}
    # BRPOP takes from the right: the restored messages come before the one behind them.
    order = [json.loads(raw)["headers"]["id"] for raw in client.lrange(QUEUE, 0, -1)]
    assert order[0] == "later" and sorted(order[1:]) == ["a", "c"]
    # A second hand-back (a racing reaper) restores nothing twice.
    assert handback.restore_held("w1") == ["b"]
    assert handback.restore_held("w1") == []
    assert client.llen(QUEUE) == 4


def test_unclaim_only_moves_the_claimants_own_running_jobs(client: redis.Redis) -> None:
    client.hset("vq:job:j1", mapping={"status": "running", "worker": "w1", "deliveries": 1})
    client.hset("vq:job:j2", mapping={"status": "running", "worker": "w2", "deliveries": 1})
    client.hset("vq:job:j3", mapping={"status": "succeeded", "worker": "w1", "deliveries": 1})
    assert HandBack(client).unclaim("w1", ["j1", "j2", "j3"]) == 1
    assert client.hget("vq:job:j1", "status") == b"queued"
    assert client.hget("vq:job:j1", "deliveries") == b"0"
    assert client.zscore(QUEUED_INDEX, "j1") is not None
    assert client.hget("vq:job:j2", "status") == b"running"
    assert client.hget("vq:job:j3", "status") == b"succeeded"


def test_a_result_is_stored_only_by_the_claims_owner(client: redis.Redis) -> None:
    store = JobStore(client, result_ttl_s=60, max_deliveries=3)
    client.hset("vq:job:j1", mapping={"status": "running", "worker": "new", "deliveries": 2})
    late = Outcome("j1", status=Status.SUCCEEDED, result={"x": 1})
    assert store.finish([late], "paused") == 0  # the old owner came back: nothing stored
    assert client.hget("vq:job:j1", "status") == b"running"
    assert store.finish([late], "new") == 1
    assert store.finish([late], "new") == 0  # and never a second time
    assert client.hget("vq:job:j1", "stores") == b"1"


def test_reaper_fences_a_silent_worker_and_hands_its_messages_back(
    server: RedisServer, client: redis.Redis
) -> None:
    with _fetched(server.url, "dead", ["a", "b"]):
        _check_reap(client)


def _check_reap(client: redis.Redis) -> None:
    client.sadd(WORKERS_INDEX, "dead", "live")
    client.set(worker_key("live"), "{}", px=60_000)
    reaped_calls: list[str] = []
    reaper = Reaper(client, "me", poll_s=1, confirm_s=4,
                    on_reaped=lambda w, _jobs: reaped_calls.append(w))  # fmt: skip
    assert reaper.check(now=100.0) == []  # seen missing once: not yet
    assert reaper.check(now=102.0) == []
    assert reaper.check(now=104.5) == ["dead"]
    assert reaped_calls == ["dead"]
    assert client.llen(QUEUE) == 2 and client.hlen(UNACKED_KEY) == 0
    assert client.exists(fence_key("dead")) == 1
    assert client.smembers(WORKERS_INDEX) == {b"live"}
    # The dead worker was only paused: back, it may not beat again, and it is told to go.
    told: list[bool] = []
    beat = Heartbeat(client, "dead", {}, interval_s=1, on_fenced=lambda: told.append(True))
    beat._beat()
    assert told == [True] and client.exists(worker_key("dead")) == 0


def test_reaper_never_counts_time_it_could_not_reach_redis(client: redis.Redis) -> None:
    client.sadd(WORKERS_INDEX, "other")
    reaper = Reaper(client, "me", poll_s=1, confirm_s=4)
    assert reaper.check(now=10.0) == []
    reaper._missing.clear()  # what _loop does after a Redis error
    assert reaper.check(now=20.0) == []  # counting starts again here
    assert reaper.check(now=24.5) == ["other"]


def test_sweeper_holder_keeps_its_lock_and_never_skips_a_run(client: redis.Redis) -> None:
    app = make_celery(WorkerSettings(redis_url=_url(client)))
    sweeper = LostMessageSweeper(client, app, grace_s=5, interval_s=10, owner="me")
    client.hset("vq:job:j1", mapping={"status": "queued", "model": "m", "lane": "interactive"})
    for run in range(3):  # back to back, as a worker's runs are; the lock outlives each
        client.delete("gpu.m")
        client.zadd(QUEUED_INDEX, {"j1": 1.0})
        assert sweeper.sweep(now=100.0 + run) == ["j1"], f"run {run} skipped"
    other = LostMessageSweeper(client, app, grace_s=5, interval_s=10, owner="other")
    client.delete("gpu.m")
    client.zadd(QUEUED_INDEX, {"j1": 1.0})
    assert other.sweep(now=200.0) == []  # another worker waits for the holder's lock
    assert other.sweep(now=200.0, prompt=True) == ["j1"]  # except for a prompt pass


def _url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"
