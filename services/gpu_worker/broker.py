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
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """QoS whose Redis bookkeeping tolerates a channel whose connection was dropped."""

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
