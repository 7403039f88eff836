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

It also records which worker holds which message: every delivery tag a worker's channel
adds to kombu's ``unacked`` hash is added, in the same pipeline, to that worker's set
``vq:held:<worker id>`` and removed with it at ack. Redis's ``unacked`` entries say nothing
about their consumer; this set is what lets the reaper (reaper.py) hand a dead worker's
messages back within seconds instead of after the visibility timeout.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

logger = logging.getLogger(__name__)

# One consumer per worker process: the set its channel records delivery tags in.
_held_key: str | None = None


def record_holdings(key: str | None) -> None:
    """Record this process's delivery tags in the Redis set ``key`` (None: stop)."""
    global _held_key
    _held_key = key


class QoS(kombu_redis.QoS):
    """QoS whose Redis bookkeeping tolerates a channel whose connection was dropped."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        key = _held_key
        if key is None:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        delivery = message.delivery_info
        raw = dumps(  # type: ignore[no-untyped-call]
            [message._raw, delivery["exchange"], delivery["routing_key"]]
        )
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, raw)
            pipe.sadd(key, delivery_tag)
            pipe.execute()
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
                "broker connection gone: %d unacked message(s) will be restored by the "
                "visibility-timeout sweep",
                len(self._delivered),
            )
            self._delivered.clear()
            return None

    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
        except AttributeError:
            logger.warning("ack on a dropped broker connection; the message will be redelivered")

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
            logger.warning("reject on a dropped broker connection; the sweep restores it")


class Channel(kombu_redis.Channel):
    """Redis channel using the tolerant QoS."""

    QoS = QoS


class Transport(kombu_redis.Transport):
    """Redis transport using the tolerant channel; select with ``broker_transport``."""

    Channel = Channel


TRANSPORT_PATH = f"{__name__}:Transport"
