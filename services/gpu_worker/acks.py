"""Messages acked in Redis by the batch's finish script, before Celery acks them.

lua/finish.lua deletes each stored batch's kombu ``unacked`` entries (and the worker's
holding of them) in the same atomic step as the results: one round trip for the batch
instead of one ack pipeline per message. Celery still acks every message when its task
returns; for a tag settled here, the broker's QoS (broker.py) only forgets it in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

_lock = threading.Lock()
_settled: set[str] = set()


def settle(tags: Iterable[str]) -> None:
    """Mark these delivery tags acked in Redis; call before their tasks may return."""
    with _lock:
        _settled.update(t for t in tags if t)


def take_settled(tag: str) -> bool:
    """True (once) when ``tag`` was acked in Redis already: its ack only forgets it."""
    with _lock:
        if tag in _settled:
            _settled.remove(tag)
            return True
        return False
