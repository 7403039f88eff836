"""kombu's Redis transport, made to survive a broker outage inside a Celery 5.7 worker.

When the broker connection breaks, Celery 5.7's consumer first ``collect()``s the
connection (which drops the transport's client) and then closes it; the channel's close
then tries to restore unacked messages through that dropped client and raises
``AttributeError`` — not a connection error — which Celery treats as unrecoverable, and the
worker exits. Later acks of in-flight tasks on the dead channel fail the same way.

Here those calls give up quietly instead: the messages stay in kombu's ``unacked`` hash in
Redis and come back through the visibility-timeout sweep, and a job that already has its
result is acked on redelivery without running again (see claim.lua), so nothing is lost or
run twice.

A Redis at its ``maxmemory`` (noeviction) refuses kombu's writes too: the queue binding
made at start-up (the worker exited with "Unrecoverable error") and the unacked record of
each delivered message (written after the message left its list: a refusal would lose it).
Both are tiny and go through ``allow-oom`` scripts here. Redis also refuses every command
queued in a MULTI while it is full, even reads and deletions, so the queue-size read of
``queue_declare`` and the ack's two deletions run as plain (non-transactional) pipelines:
neither needs atomicity. So a worker starts and drains a full Redis; the periodic unacked
sweep just skips its turn while Redis is full.

It also records which worker holds which message: every delivery tag a worker's channel
adds to kombu's ``unacked`` hash is added, in the same script, to that worker's set
``vq:held:<worker id>`` and removed with it at ack. Redis's ``unacked`` entries say nothing
about their consumer; this set is what lets the reaper (reaper.py) hand a dead worker's
messages back within seconds instead of after the visibility timeout. The same script
refuses the record once the worker is fenced (declared dead): a worker paused in BRPOP,
or fetching while the reaper emptied its held set, would otherwise leave a record nobody
holds. The message goes back to its queue and the worker exits (``on_fenced``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

from services.common.protocol.scripts import (
    kombu_append,
    kombu_bind,
    kombu_deliver_many,
    script_text,
)
from services.gpu_worker.acks import take_settled

logger = logging.getLogger(__name__)

# One consumer per worker process: the set its channel records delivery tags in, the key
# that says it was declared dead, and what to do then.
_held_key: str | None = None
_fence_key: str | None = None
_on_fenced: Callable[[], None] | None = None
# The worker's own Redis client: acks and rejects that kombu can no longer send (its
# channel lost its connection in a broker outage) go through it instead.
_spare: redis.Redis | None = None

# Told how many messages a bulk delivery is about to hand in (the runtime's batcher waits
# for them: Celery hands them to the task pool one at a time, ~0.3-0.5 ms each).
_on_bulk: Callable[[int], None] | None = None

_RESTORE_LUA = script_text("handback_restore")
# The most messages one bulk delivery takes (the consumer's prefetch credit caps it first).
BULK_DELIVERY_MAX = 64


def record_holdings(
    key: str | None,
    fence: str | None = None,
    on_fenced: Callable[[], None] | None = None,
    client: redis.Redis | None = None,
) -> None:
    """Record this process's delivery tags in the Redis set ``key`` (None: stop).

    With ``fence`` (the worker's fence key), a delivery made after the worker was declared
    dead is not recorded: the message goes back to the head of its queue and ``on_fenced``
    runs; in a worker it must not return (it exits), since the message runs elsewhere.
    With ``client``, an ack or a requeue on a channel that lost its connection is done
    through it: otherwise the record stays held by this live worker until the visibility
    timeout (300 s), out of the reaper's and the sweepers' reach.
    """
    global _held_key, _fence_key, _on_fenced, _spare
    _held_key = key
    _fence_key = fence if key is not None else None
    _on_fenced = on_fenced
    _spare = client


def on_bulk_delivery(callback: Callable[[int], None] | None) -> None:
    """Call ``callback(n)`` before a bulk delivery hands ``n`` messages to the consumer."""
    global _on_bulk
    _on_bulk = callback


def _ack_spare(delivery_tag: str) -> bool:
    """kombu's ack (and our held-set removal) through the spare client; False if none."""
    if _spare is None:
        return False
    pipe = _spare.pipeline(transaction=False)
    pipe.zrem(kombu_redis.Channel.unacked_index_key, delivery_tag)
    pipe.hdel(kombu_redis.Channel.unacked_key, delivery_tag)
    if _held_key is not None:
        pipe.srem(_held_key, delivery_tag)
    pipe.execute()
    return True


def _requeue_spare(delivery_tag: str) -> bool:
    """Put an unacked message back at the head of its queue through the spare client."""
    if _spare is None or _held_key is None:
        return False
    raw = _spare.hget(kombu_redis.Channel.unacked_key, delivery_tag)
    if raw is None:  # restored or acked already
        _spare.srem(_held_key, delivery_tag)
        return True
    message, _exchange, routing_key = loads(raw)  # type: ignore[no-untyped-call]
    message.setdefault("headers", {})["redelivered"] = True
    keys = [kombu_redis.Channel.unacked_key, kombu_redis.Channel.unacked_index_key, _held_key]
    # The same guarded move as a hand-back (handback.py): back once, at the head.
    _spare.register_script(_RESTORE_LUA)(
        keys=[*keys, str(routing_key)],
        args=[delivery_tag, dumps(message)],  # type: ignore[no-untyped-call]
    )
    return True


class QoS(kombu_redis.QoS):
    """QoS whose Redis bookkeeping tolerates a dropped connection and a full Redis."""

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        # kombu's own transactions (restore_by_tag) pass their pipe; ack and reject don't.
        if pipe is not None:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as conn:
                yield conn.pipeline(transaction=False)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> Any:
        try:
            return super().restore_visible(start, num, interval)  # type: ignore[no-untyped-call]
        except redis.exceptions.OutOfMemoryError:
            logger.info("Redis is full: the unacked sweep skips this turn")
            return None

    def append(self, message: Any, delivery_tag: Any) -> None:
        recorded = getattr(self.channel, "recorded", None)
        if recorded is not None and delivery_tag in recorded:
            # Taken by a bulk delivery, which wrote this record when it took the message.
            recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        # One allow-oom script: the message already left its list, so a write refused by a
        # full Redis would lose it; the holder set (when on) is written in the same call.
        delivery = message.delivery_info
        # The message is encoded once: kombu's record is the JSON list [message, exchange,
        # routing key] (what kombu's own dumps would write), and the same text goes back
        # to its queue if the worker turns out fenced.
        body: str = dumps(message._raw)  # type: ignore[no-untyped-call]
        ends = dumps([delivery["exchange"], delivery["routing_key"]])  # type: ignore[no-untyped-call]
        raw = f"[{body}, {ends[1:]}"
        keys = [self.unacked_index_key, self.unacked_key]
        queued = ""
        if _held_key is not None:
            keys.append(_held_key)
            if _fence_key is not None:
                # Our queues are declared with routing key == queue name (see handback.py).
                keys += [_fence_key, str(delivery["routing_key"])]
                queued = body
        with self.channel.conn_or_acquire() as client:
            now = time.time()
            recorded = kombu_append(client, keys, delivery_time=now, tag=delivery_tag,
                                    message_json=raw, queued_json=queued)  # fmt: skip
        if not recorded:
            logger.critical(
                "declared dead while fetching: message %s went back to its queue", delivery_tag
            )
            if _on_fenced is not None:
                _on_fenced()
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        pipe = super()._remove_from_indices(delivery_tag, pipe)  # type: ignore[no-untyped-call]
        if _held_key is not None:
            pipe.srem(_held_key, delivery_tag)
        return pipe

    def restore_unacked(self, client: Any = None) -> Any:
        try:
            return super().restore_unacked(client)  # type: ignore[no-untyped-call]
        except AttributeError:
            logger.warning(
                "broker connection gone: %d unacked message(s) stay held; their tasks ack "
                "or requeue them through the worker's own client",
                len(self._delivered),
            )
            self._delivered.clear()
            return None

    def ack(self, delivery_tag: Any) -> None:
        if take_settled(delivery_tag):  # acked in Redis with its result (acks.py)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        try:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
        except AttributeError:
            self._on_dropped(delivery_tag, _ack_spare, "ack")

    def _on_dropped(self, tag: Any, spare: Callable[[str], bool], what: str) -> None:
        """An ack or requeue kombu's dropped channel could not send: send it ourselves."""
        try:
            done = spare(str(tag))
        except (redis.RedisError, OSError) as exc:
            logger.warning("%s on a dropped broker connection failed again (%s)", what, exc)
            done = False
        if not done:
            logger.warning("%s on a dropped broker connection; the reaper or the "
                           "visibility timeout restores the message", what)  # fmt: skip
        self._delivered.pop(tag, None)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            if requeue:
                # kombu puts a rejected message at the back of its queue (LPUSH); a message
                # handed back unstarted goes to the head (RPUSH: BRPOP takes from the right).
                self.restore_by_tag(delivery_tag, leftmost=False)  # type: ignore[no-untyped-call]
                virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
                return
            super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]
        except AttributeError:
            self._on_dropped(delivery_tag, _requeue_spare if requeue else _ack_spare, "reject")


class Channel(kombu_redis.Channel):
    """Redis channel using the tolerant QoS; binds queues even while Redis is full."""

    QoS = QoS
    _shared: redis.Redis | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Delivery tags a bulk delivery recorded in Redis and QoS.append has not yet seen.
        self.recorded: set[str] = set()
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def _brpop_read(self, **options: Any) -> Any:
        try:
            delivered = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except json.JSONDecodeError as exc:
            # kombu's read of a popped entry that is not JSON (pushed by hand, or by another
            # program on the same key): Celery ends the worker on it as an "unrecoverable
            # error", and so did every worker restarted after it. It is already off its
            # list and nothing can run it: dropped, with what it looked like.
            logger.error(
                "dropped a queue entry that is not a kombu message (%d bytes, starting %r): %s",
                len(exc.doc), exc.doc[:64], exc,
            )  # fmt: skip
            raise Empty() from None
        # A BRPOP returns one message and the next BRPOP is sent only after it is handled:
        # under a backlog each message cost the consumer thread two round trips (the BRPOP
        # and its unacked record) and Redis a blocking-client wake-up. The messages that
        # are already waiting are taken and recorded in one script instead, up to the
        # prefetch credit left (the consumer's own limit: the worker's concurrency).
        if _held_key is not None and _fence_key is not None and not self.global_keyprefix:
            self._deliver_waiting(_held_key, _fence_key)
        return delivered

    def _deliver_waiting(self, held: str, fence: str) -> None:
        # None: no prefetch limit (not a Celery worker); such a consumer keeps kombu's pace.
        credit = self.qos.can_consume_max_estimate()
        queues = self._queue_cycle.consume(len(self.active_queues))
        if credit is None or credit <= 0 or not queues:
            return
        most = min(int(credit), BULK_DELIVERY_MAX)
        lists = [[self._q_for_pri(q, pri) for pri in self.priority_steps] for q in queues]  # type: ignore[no-untyped-call]
        records = (self.unacked_index_key, self.unacked_key, held, fence)
        try:
            with self.conn_or_acquire() as client:
                taken = kombu_deliver_many(
                    client, records, lists, delivery_time=time.time(), most=most
                )
        except redis.RedisError as exc:  # nothing was taken: the script is one step
            logger.debug("bulk delivery skipped: %s", exc)
            return
        messages = [(list_key, loads(body)) for list_key, body in taken]  # type: ignore[no-untyped-call]
        for _, message in messages:
            self.recorded.add(message["properties"]["delivery_tag"])
        if messages and _on_bulk is not None:
            _on_bulk(len(messages))
        for done, (list_key, message) in enumerate(messages):
            queue = list_key.rsplit(self.sep, 1)[0]  # kombu's _brpop_read does the same
            try:
                self._queue_cycle.rotate(queue)
                self.connection._deliver(message, queue)
            except BaseException:
                # The ones kombu's QoS never saw (their tags still in `recorded`: this one,
                # if it failed before its append, and the rest) go back to the head of their
                # queues; one it saw is restored by kombu itself when the channel closes.
                self._give_back([m for _, m in messages[done:]])
                raise

    def _give_back(self, messages: list[dict[str, Any]]) -> None:
        # RPUSH is the head (BRPOP takes from the right): the oldest is pushed last.
        for message in reversed(messages):
            tag = message["properties"]["delivery_tag"]
            if tag not in self.recorded:
                continue
            self.recorded.discard(tag)
            try:
                self.qos.restore_by_tag(tag, leftmost=False)
            except Exception as exc:  # the reaper or the visibility timeout restores it
                logger.warning("giving back undelivered message %s failed: %s", tag, exc)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # kombu builds a new redis.Redis (~0.3 ms with redis-py 8) on every call: the
        # unacked record of each delivered message, each ack. One client per connection
        # pool does the same: a client takes a pooled connection per command and is
        # thread-safe. It is rebuilt whenever kombu replaced or dropped its pool (close,
        # fork, reconnect), through kombu's own path, so a channel whose transport was
        # collected still raises as kombu's does (QoS.restore_unacked relies on that).
        if client:
            yield client
            return
        shared = self._shared
        if shared is None or self._pool is None or shared.connection_pool is not self._pool:
            shared = self._shared = self._create_client()  # type: ignore[no-untyped-call]
        yield shared

    def _size(self, queue: str) -> int:
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for pri in self.priority_steps:
                pipe.llen(self._q_for_pri(queue, pri))  # type: ignore[no-untyped-call]
            return sum(size for size in pipe.execute() if isinstance(size, int))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)  # type: ignore[no-untyped-call]
        except redis.exceptions.OutOfMemoryError:
            # The same two set members kombu writes (the fanout marking above already ran).
            member = self.sep.join([routing_key or "", pattern or "", queue or ""])
            table = self.keyprefix_queue % (exchange,)
            permanent = self.keyprefix_binding_permanent % (exchange,)
            with self.conn_or_acquire() as client:
                kombu_bind(client, table, permanent, member=member)


class Transport(kombu_redis.Transport):
    """Redis transport using the tolerant channel; select with ``broker_transport``."""

    Channel = Channel


TRANSPORT_PATH = f"{__name__}:Transport"
