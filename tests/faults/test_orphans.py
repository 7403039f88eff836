"""An unacked message that no live worker holds: found and given back (issue 9).

The chaos test once left a job `queued` (deliveries 0) with its message in kombu's
``unacked`` hash, recorded for a worker the reaper had already reaped ("handed back 0"):
a worker declared dead can still fetch (paused in BRPOP, the message popped into its
socket while it was stopped, recorded when it resumed; or fetching while the reaper read
and then deleted its held set). Nothing then held the record, and the sweeper skips
messages that are still in the broker: only the 300 s visibility timeout was left.

A ghost consumer (tests/faults/ghost_consumer.py: the worker's own transport and holdings
bookkeeping, then SIGKILL) reproduces both windows deterministically, at default settings.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.common.redis_server import RedisServer
from services.gpu_worker.handback import UNACKED_KEY, WORKERS_INDEX, held_key
from services.gpu_worker.reaper import ORPHAN_GRACE_S, Reaper
from tests.conftest import IDLE_MODEL, TEST_MODEL
from tests.faults.conftest import MakeStack, fault_jpeg, record_figure
from tests.images import jpeg
from tests.integration.helpers import files, submit, wait_jobs

pytestmark = pytest.mark.integration

BOUND_S = 15.0  # the recovery bound
QUEUE = f"gpu.{IDLE_MODEL}"  # no worker serves it until the test starts one


@pytest.fixture()
def ghosts() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _ghost(url: str, worker_id: str, started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.ghost_consumer", url, QUEUE, worker_id],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(proc)
    return proc


def _fetched(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the ghost gives up after 60 s
    assert line.startswith("fetched "), line
    return line.split()[1]


def _wait_blocked(client: redis.Redis, clients_before: int) -> None:
    """Until one more client waits in BRPOP (the ghost is consuming)."""
    deadline = time.monotonic() + 60
    while int(client.info("clients")["blocked_clients"]) <= clients_before:
        assert time.monotonic() < deadline, "the ghost never blocked in BRPOP"
        time.sleep(0.05)


def test_a_reaped_worker_that_fetches_gives_the_message_back(
    default_stack: MakeStack, fault_redis: RedisServer, ghosts: list[subprocess.Popen[str]]
) -> None:
    stack = default_stack()
    stack.start_api()
    client = redis.Redis.from_url(fault_redis.url)
    ghost_id = "ghost:1:cpu:aaaaaa"
    client.sadd(WORKERS_INDEX, ghost_id)
    blocked = int(client.info("clients")["blocked_clients"])
    ghost = _ghost(fault_redis.url, ghost_id, ghosts)
    _wait_blocked(client, blocked)
    # Declared dead while it waits in BRPOP: fenced, nothing held, its held set deleted.
    reaper = Reaper(client, "test-reaper", poll_s=1.0, confirm_s=0.0)
    assert reaper.reap(ghost_id)
    (job_id,) = submit(stack.url, files(("late.jpg", jpeg(3, (96, 96)))), model=IDLE_MODEL)
    tag = _fetched(ghost)  # it got the message after it was reaped...
    ghost.kill()
    ghost.wait(10)
    # ...and did not keep it: back at the head of its queue, no record nobody holds.
    assert client.llen(QUEUE) == 1
    assert not client.hexists(UNACKED_KEY, tag)
    assert not client.exists(held_key(ghost_id))
    stack.start_worker(models=IDLE_MODEL)
    (record,) = wait_jobs(stack.url, [job_id], timeout=180)
    assert record["status"] == "succeeded"
    assert record["timings"]["deliveries"] == 1
    assert int(client.hget(f"vq:job:{job_id}", "stores") or 0) == 1
    assert client.hlen(UNACKED_KEY) == 0


def _stored_once(client: redis.Redis) -> None:
    for key in client.scan_iter("vq:job:*"):
        status, stores = client.hmget(key, "status", "stores")
        assert (status, stores) == (b"succeeded", b"1"), key


def _worker_id(client: redis.Redis, pid: int) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for key in client.scan_iter("vq:worker:*"):
            info = json.loads(client.get(key) or b"{}")
            if info.get("pid") == pid:
                return str(info["worker_id"])
        time.sleep(0.2)
    raise AssertionError(f"no heartbeat from pid {pid}")


def test_a_worker_paused_in_brpop_and_reaped_keeps_nothing(
    default_stack: MakeStack, fault_redis: RedisServer
) -> None:
    # The chaos test's pause, made exact: stopped while waiting in BRPOP, Redis pops a
    # message into its socket; the other worker's reaper declares it dead; resumed at once,
    # it must not record the message it finds, which runs elsewhere, once.
    stack = default_stack()
    stack.start_api()
    paused = stack.start_worker(models=IDLE_MODEL)
    watcher = stack.start_worker(1, models=TEST_MODEL)
    stack.wait_ready([paused, watcher])
    client = redis.Redis.from_url(fault_redis.url)
    paused_id = _worker_id(client, paused.popen.pid)
    for attempt in range(6):
        # kombu's BRPOP times out every second: a pause between two leaves none pending.
        paused.popen.send_signal(signal.SIGSTOP)
        (job_id,) = submit(stack.url, files((f"p{attempt}.jpg", jpeg(attempt, (96, 96)))),
                           model=IDLE_MODEL)  # fmt: skip
        time.sleep(0.5)
        if client.llen(QUEUE) == 0:
            break  # popped into the stopped worker's socket, recorded nowhere
        paused.popen.send_signal(signal.SIGCONT)
        wait_jobs(stack.url, [job_id], timeout=60)
    assert client.llen(QUEUE) == 0 and client.hlen(UNACKED_KEY) == 0, "never popped"
    deadline = time.monotonic() + 60
    while not client.exists(f"vq:fenced:{paused_id}"):  # about 10 s after its last beat
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    stack.start_worker(2, models=IDLE_MODEL)  # the replacement, starting while it resumes
    paused.popen.send_signal(signal.SIGCONT)
    assert paused.popen.wait(30) == 3  # it learns it was declared dead and leaves
    (record,) = wait_jobs(stack.url, [job_id], timeout=180)
    assert record["status"] == "succeeded"
    _stored_once(client)
    deadline = time.monotonic() + 15
    while client.hlen(UNACKED_KEY) or client.llen(QUEUE):
        assert time.monotonic() < deadline, (client.hgetall(UNACKED_KEY), stack.logs())
        time.sleep(0.2)
    assert not client.exists(held_key(paused_id))


def test_an_unacked_record_no_live_worker_holds_runs_elsewhere_once(
    default_stack: MakeStack, fault_redis: RedisServer, ghosts: list[subprocess.Popen[str]]
) -> None:
    stack = default_stack()
    stack.start_api()
    client = redis.Redis.from_url(fault_redis.url)
    ghost_id = "ghost:2:cpu:bbbbbb"
    client.sadd(WORKERS_INDEX, ghost_id)
    client.set(f"vq:worker:{ghost_id}", "{}", ex=600)  # it beats: alive to every reaper
    blocked = int(client.info("clients")["blocked_clients"])
    ghost = _ghost(fault_redis.url, ghost_id, ghosts)
    _wait_blocked(client, blocked)
    (job_id,) = submit(stack.url, files(("held.jpg", jpeg(4, (96, 96)))), model=IDLE_MODEL)
    tag = _fetched(ghost)
    assert client.sismember(held_key(ghost_id), tag)  # one script: record and holder
    worker = stack.start_worker(models=IDLE_MODEL)
    stack.wait_ready([worker])
    # A live holder keeps its message: not given back, however old.
    time.sleep(ORPHAN_GRACE_S + 3)
    assert client.hexists(UNACKED_KEY, tag)
    assert client.hget(f"vq:job:{job_id}", "status") == b"queued"
    # Its holder record lost (what a reaper racing a fetch, or a Redis restart, could
    # leave), then the holder dies: a record nobody holds.
    ghost.kill()
    ghost.wait(10)
    lost = time.monotonic()
    client.delete(held_key(ghost_id))
    client.srem(WORKERS_INDEX, ghost_id)
    client.delete(f"vq:worker:{ghost_id}")
    (record,) = wait_jobs(stack.url, [job_id], timeout=120)
    elapsed = time.monotonic() - lost
    record_figure("orphan_unacked_ran_elsewhere_s", elapsed)
    assert record["status"] == "succeeded"
    assert record["timings"]["deliveries"] == 1
    assert elapsed <= BOUND_S
    assert int(client.hget(f"vq:job:{job_id}", "stores") or 0) == 1
    assert client.hlen(UNACKED_KEY) == 0
    assert client.llen(QUEUE) == 0


def test_an_ack_after_a_broker_outage_leaves_nothing_held(
    default_stack: MakeStack, fault_redis: RedisServer
) -> None:
    # Redis killed -9 and restarted while a batch runs: the worker's consumer reconnects on a
    # new channel, and the old channel, which delivered the running job, has lost its
    # connection. Its ack must still reach Redis: otherwise the record stays held by a live
    # worker (no reaper, no sweeper takes it) until the 300 s visibility timeout.
    stack = default_stack()
    stack.start_api()
    worker = stack.start_worker(models=TEST_MODEL)
    stack.wait_ready([worker])
    client = redis.Redis.from_url(fault_redis.url)
    (job_id,) = submit(stack.url, files(("slow.jpg", fault_jpeg("slow=8"))))
    deadline = time.monotonic() + 60
    while client.hget(f"vq:job:{job_id}", "status") != b"running":
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)
    time.sleep(1.5)  # one appendfsync everysec period: the claim and the record survive
    fault_redis.kill()
    time.sleep(2.0)
    fault_redis.restart()
    (record,) = wait_jobs(stack.url, [job_id], timeout=120)
    assert record["status"] == "succeeded"
    client = redis.Redis.from_url(fault_redis.url)
    deadline = time.monotonic() + 10
    while client.hlen(UNACKED_KEY) or any(client.scan_iter("vq:held:*")):
        assert time.monotonic() < deadline, (client.hgetall(UNACKED_KEY), stack.logs())
        time.sleep(0.2)
    assert worker.alive()


def test_orphan_give_back_spares_holders_and_fresh_records(fault_redis: RedisServer) -> None:
    # The script's own rules, on a bare Redis: four records, one of each kind.
    from kombu.utils.json import dumps

    from services.gpu_worker.handback import UNACKED_INDEX_KEY, HandBack

    client = redis.Redis.from_url(fault_redis.url)
    now = time.time()

    def record(tag: str, job: str, fetched: float) -> None:
        message = {"headers": {"id": job}, "properties": {"delivery_info": {}}, "body": ""}
        client.hset(UNACKED_KEY, tag, dumps([message, "ex", QUEUE]))  # type: ignore[no-untyped-call]
        client.zadd(UNACKED_INDEX_KEY, {tag: fetched})

    record("held", "job-held", now - 60)  # a registered worker holds it
    record("dead", "job-dead", now - 60)  # held by a worker dead but not yet reaped
    record("fresh", "job-fresh", now - 1)  # within the grace
    record("orphan", "job-orphan", now - 60)
    client.sadd(WORKERS_INDEX, "live", "dying")
    client.sadd(held_key("live"), "held")
    client.sadd(held_key("dying"), "dead")
    client.sadd(held_key("gone"), "orphan")  # a held set of a worker no longer registered
    handback = HandBack(client)
    assert handback.restore_orphans(ORPHAN_GRACE_S, now) == ["job-orphan"]
    assert handback.restore_orphans(ORPHAN_GRACE_S, now) == []  # once
    assert sorted(client.hkeys(UNACKED_KEY)) == [b"dead", b"fresh", b"held"]
    assert client.zscore(UNACKED_INDEX_KEY, "orphan") is None
    (queued,) = client.lrange(QUEUE, 0, -1)
    assert b'"redelivered": true' in queued and b"job-orphan" in queued


def test_requeue_through_the_spare_client_moves_the_message_once(
    fault_redis: RedisServer,
) -> None:
    # What a task's Reject(requeue) does when its channel lost its connection (broker.py).
    from kombu.utils.json import dumps

    from services.gpu_worker import broker
    from services.gpu_worker.handback import UNACKED_INDEX_KEY

    client = redis.Redis.from_url(fault_redis.url)
    message = {"headers": {"id": "job-1"}, "properties": {"delivery_info": {}}, "body": ""}
    client.hset(UNACKED_KEY, "t1", dumps([message, "ex", QUEUE]))  # type: ignore[no-untyped-call]
    client.zadd(UNACKED_INDEX_KEY, {"t1": time.time()})
    client.sadd(held_key("w"), "t1")
    client.rpush(QUEUE, b"older")
    broker.record_holdings(held_key("w"), client=client)
    try:
        assert broker._requeue_spare("t1")
        assert broker._requeue_spare("t1")  # a second requeue finds nothing to move
    finally:
        broker.record_holdings(None)
    assert client.hlen(UNACKED_KEY) == 0 and client.zcard(UNACKED_INDEX_KEY) == 0
    assert not client.exists(held_key("w"))
    assert client.lindex(QUEUE, -1) != b"older"  # at the head: BRPOP takes from the right
    assert client.llen(QUEUE) == 2
