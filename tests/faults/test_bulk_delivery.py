"""Bulk delivery: a worker takes the messages already waiting in one call (broker.py).

The script is checked against kombu itself (publishing, priorities, its restore of an
unacked record), and the whole stack with a backlog under the default settings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Consumer, Queue
from kombu.connection import Connection
from kombu.utils.json import loads

from services.common.protocol.keys import queue_name
from services.common.protocol.scripts import kombu_deliver_many
from services.common.redis_server import RedisServer
from services.gpu_worker.broker import Transport, on_bulk_delivery, record_holdings
from tests.conftest import TEST_MODEL
from tests.faults.conftest import MakeStack
from tests.images import jpeg
from tests.integration.helpers import files, submit, wait_jobs

pytestmark = pytest.mark.integration

SEP = "\x06\x16"  # kombu's Redis separator between a queue and its priority suffix
RECORDS = ("unacked_index", "unacked", "vq:held:w1", "vq:fence:w1")


def _lists(*queues: str) -> list[list[str]]:
    return [[q] + [f"{q}{SEP}{pri}" for pri in (3, 6, 9)] for q in queues]


@pytest.fixture()
def kombu_conn(fault_redis: RedisServer) -> Iterator[Connection]:
    conn = Connection(fault_redis.url, transport=Transport)  # type: ignore[no-untyped-call]
    try:
        yield conn
    finally:
        conn.release()  # type: ignore[no-untyped-call]


def _publish(conn: Connection, queue: str, body: str, priority: int = 0) -> None:
    simple = conn.SimpleQueue(queue)  # type: ignore[no-untyped-call]
    simple.put(body, priority=priority)
    simple.close()


def test_takes_waiting_messages_in_brpop_order_and_records_each(
    fault_redis: RedisServer, kombu_conn: Connection
) -> None:
    client = redis.Redis.from_url(fault_redis.url, decode_responses=True)
    for body, pri in (("a1", 0), ("a2", 0), ("a3", 9)):
        _publish(kombu_conn, "qa", body, pri)
    _publish(kombu_conn, "qb", "b1")
    before = time.time()
    taken = kombu_deliver_many(client, RECORDS, _lists("qa", "qb"), delivery_time=before, most=3)
    channel = kombu_conn.default_channel
    decoded = [channel.Message(loads(m), channel=channel) for _, m in taken]  # type: ignore[no-untyped-call]
    # Highest priority first; between queues, round robin as kombu's rotation does.
    assert [m.decode() for m in decoded] == ["a1", "b1", "a2"]  # type: ignore[no-untyped-call]
    assert [lst for lst, _ in taken] == ["qa", "qb", "qa"]
    tags = [m.delivery_tag for m in decoded]
    assert client.smembers("vq:held:w1") == set(tags)
    for (_, raw), tag in zip(taken, tags, strict=True):
        record = loads(client.hget("unacked", tag))  # type: ignore[no-untyped-call]
        message = loads(raw)  # type: ignore[no-untyped-call]
        info = message["properties"]["delivery_info"]
        assert record == [message, info["exchange"], info["routing_key"]]
        assert client.zscore("unacked_index", tag) == pytest.approx(before)
    # `most` left the low-priority message where it was.
    assert client.llen(f"qa{SEP}9") == 1 and client.llen("qa") == 0 and client.llen("qb") == 0

    # kombu reads the record: its own restore puts the message back intact, at the head.
    kombu_conn.default_channel.qos.restore_by_tag(tags[1], leftmost=False)
    assert client.hget("unacked", tags[1]) is None
    restored = loads(client.lindex("qb", -1))  # type: ignore[no-untyped-call]
    original = loads(taken[1][1])  # type: ignore[no-untyped-call]
    assert restored["body"] == original["body"]
    assert restored["properties"]["delivery_tag"] == tags[1]
    assert restored["headers"]["redelivered"] is True  # kombu's own marking of a restore


def test_a_fenced_worker_takes_nothing(fault_redis: RedisServer, kombu_conn: Connection) -> None:
    client = redis.Redis.from_url(fault_redis.url, decode_responses=True)
    _publish(kombu_conn, "qa", "a1")
    client.set("vq:fence:w1", "1")
    assert kombu_deliver_many(client, RECORDS, _lists("qa"), delivery_time=1.0, most=8) == []
    assert client.llen("qa") == 1 and client.hlen("unacked") == 0


def test_an_unreadable_message_goes_back_and_stops_the_call(
    fault_redis: RedisServer, kombu_conn: Connection
) -> None:
    client = redis.Redis.from_url(fault_redis.url, decode_responses=True)
    _publish(kombu_conn, "qa", "a1")
    _publish(kombu_conn, "qb", "b1")
    client.rpush("qb", "not json")  # at the head of qb: taken after a1
    taken = kombu_deliver_many(client, RECORDS, _lists("qa", "qb"), delivery_time=1.0, most=8)
    assert len(taken) == 1 and taken[0][0] == "qa"
    # Back where it was, ahead of b1: kombu's own path meets it at the next BRPOP.
    assert client.lrange("qb", 0, -1)[-1] == "not json" and client.llen("qb") == 2
    assert client.hlen("unacked") == 1


def test_a_backlog_is_taken_in_bulk_under_default_settings(
    default_stack: MakeStack, fault_redis: RedisServer
) -> None:
    stack = default_stack()
    stack.start_api()
    ids: list[str] = []
    for r in range(2):  # 32 files per request at most (VISIONQ_MAX_FILES_PER_REQUEST)
        ids += submit(stack.url, files(*[(f"{r}-{i}.jpg", jpeg(i, (64, 64))) for i in range(24)]))
    client = redis.Redis.from_url(fault_redis.url)
    client.config_resetstat()
    stack.start_worker(models=TEST_MODEL)
    records = wait_jobs(stack.url, ids, timeout=120)
    assert [r["status"] for r in records] == ["succeeded"] * len(ids)
    assert all(r["timings"]["deliveries"] == 1 for r in records)
    # One message per BRPOP took 48 BRPOPs or more; bulk delivery takes the backlog with a
    # few (the prefetch credit, twice the batch size by default, caps each call).
    brpops = int(client.info("commandstats").get("cmdstat_brpop", {}).get("calls", 0))
    assert 1 <= brpops <= len(ids) // 4, brpops
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_a_callback_failing_mid_bulk_gives_the_rest_back_in_order(
    fault_redis: RedisServer, kombu_conn: Connection
) -> None:
    """A delivery that raises stops the bulk: what kombu's QoS never saw goes back to the
    head of its queue, in order; what it saw is restored by kombu when the channel closes."""
    client = redis.Redis.from_url(fault_redis.url, decode_responses=True)
    for body in ("m1", "m2", "m3", "m4"):
        _publish(kombu_conn, "qa", body)
    seen: list[str] = []

    def on_message(body: Any, message: Any) -> None:
        seen.append(body)
        if body == "m2":
            raise RuntimeError("a consumer bug")

    record_holdings("vq:held:w1", "vq:fence:w1")
    try:
        with kombu_conn.channel() as channel:  # type: ignore[no-untyped-call]
            consumer = Consumer(channel, [Queue("qa")], callbacks=[on_message])
            consumer.qos(prefetch_count=10)
            consumer.consume()
            with pytest.raises(RuntimeError, match="a consumer bug"):
                for _ in range(3):
                    kombu_conn.drain_events(timeout=5)
            assert seen == ["m1", "m2"]
            # m3 and m4 were taken by the bulk call and given back (kombu's restore marks
            # them), m3 at the head (the right end: BRPOP takes from the right).
            raw = client.lrange("qa", 0, -1)
            queued = [channel.Message(loads(m), channel=channel) for m in raw]  # type: ignore[no-untyped-call]
            assert [m.decode() for m in queued] == ["m4", "m3"]  # type: ignore[no-untyped-call]
            assert all(m.headers.get("redelivered") for m in queued)
            assert client.hlen("unacked") == 2 and client.scard("vq:held:w1") == 2
        # Closing the channel restores what kombu saw (m1 and m2, never acked).
        assert client.llen("qa") == 4 and client.hlen("unacked") == 0
        assert client.scard("vq:held:w1") == 0
        tags = {loads(m)["properties"]["delivery_tag"] for m in client.lrange("qa", 0, -1)}  # type: ignore[no-untyped-call]
        assert len(tags) == 4
    finally:
        record_holdings(None)
    # Every message is still there once: a new consumer gets all four.
    got: list[str] = []
    with kombu_conn.channel() as channel:  # type: ignore[no-untyped-call]

        def take(body: Any, message: Any) -> None:
            got.append(body)
            message.ack()

        consumer = Consumer(channel, [Queue("qa")], callbacks=[take])
        consumer.consume()
        for _ in range(4):
            kombu_conn.drain_events(timeout=5)
    assert sorted(got) == ["m1", "m2", "m3", "m4"]


def test_a_bulk_is_announced_before_its_messages_are_handed_in(
    fault_redis: RedisServer, kombu_conn: Connection
) -> None:
    """The worker's batcher is told how many messages a bulk delivery brings before the
    first of them reaches it, so the batch being formed waits for the burst (batcher.py)."""
    for body in ("m1", "m2", "m3", "m4"):
        _publish(kombu_conn, "qa", body)
    events: list[str] = []
    record_holdings("vq:held:w1", "vq:fence:w1")
    on_bulk_delivery(lambda n: events.append(f"bulk {n}"))
    try:
        with kombu_conn.channel() as channel:  # type: ignore[no-untyped-call]

            def take(body: Any, message: Any) -> None:
                events.append(body)
                message.ack()

            consumer = Consumer(channel, [Queue("qa")], callbacks=[take])
            consumer.qos(prefetch_count=10)
            consumer.consume()
            while len(events) < 5:  # one drain may hand in the BRPOP message and the bulk
                kombu_conn.drain_events(timeout=5)
    finally:
        on_bulk_delivery(None)
        record_holdings(None)
    # BRPOP hands in m1 itself; the three already waiting come in one announced bulk.
    assert events == ["m1", "bulk 3", "m2", "m3", "m4"]


def test_a_queue_entry_that_is_not_a_message_is_dropped_and_the_worker_lives(
    default_stack: MakeStack, fault_redis: RedisServer
) -> None:
    """Something that is not a kombu message, in the middle of a backlog: the bulk script
    leaves it at the head, kombu's next BRPOP pops it; it is dropped with an error log.
    Celery used to end the worker on it (an "unrecoverable" JSONDecodeError), and every
    worker restarted after it met it again."""
    stack = default_stack()
    stack.start_api()
    client = redis.Redis.from_url(fault_redis.url)
    queue = queue_name(TEST_MODEL)
    ids = submit(stack.url, files(*[(f"a{i}.jpg", jpeg(i, (64, 64))) for i in range(20)]))
    client.lpush(queue, b"garbage \xff not json")  # the tail: behind the first 20
    ids += submit(stack.url, files(*[(f"b{i}.jpg", jpeg(i, (64, 64))) for i in range(20)]))
    worker = stack.start_worker(models=TEST_MODEL)
    records = wait_jobs(stack.url, ids, timeout=120)
    assert [r["status"] for r in records] == ["succeeded"] * len(ids)
    assert worker.alive(), worker.log_tail()
    assert "dropped a queue entry that is not a kombu message" in worker.log_tail(100_000)
    assert client.llen(queue) == 0 and client.hlen("unacked") == 0
    # And on an idle worker: popped by the waiting BRPOP itself.
    client.rpush(queue, b"{not json either")
    time.sleep(0.5)
    (late,) = submit(stack.url, files(("late.jpg", jpeg(99, (64, 64)))))
    assert wait_jobs(stack.url, [late], timeout=60)[0]["status"] == "succeeded"
    assert worker.alive(), worker.log_tail()
    assert worker.log_tail(100_000).count("dropped a queue entry") == 2
