"""Micro-batch collection: a plain, thread-safe structure with no torch and no Celery.

Items arrive one at a time under a key (the model). ``next_batch`` hands out up to
``max_batch_size`` items of one key, oldest key first, as soon as the batch is full or the
oldest item has waited ``max_wait_s``. It never returns an empty batch and keeps arrival
order inside a batch.

``expect(count, within_s)`` says that many items are already on their way (a bulk delivery
being handed in message by message): a partial batch then waits for them, up to
``within_s``, instead of leaving at ``max_wait_s`` with part of the burst.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    item: T
    arrived: float


@dataclass
class _Lanes(Generic[T]):
    """One key's waiting items: urgent ones are handed out before the others."""

    urgent: deque[_Entry[T]]
    normal: deque[_Entry[T]]

    def __len__(self) -> int:
        return len(self.urgent) + len(self.normal)

    def oldest(self) -> float:
        heads = [q[0].arrived for q in (self.urgent, self.normal) if q]
        return min(heads)


class Batcher(Generic[T]):
    """Gathers items per key into batches bounded by size and waiting time."""

    def __init__(
        self,
        max_batch_size: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._queues: dict[Hashable, _Lanes[T]] = {}
        self._cond = threading.Condition()
        self._closed = False
        # Items announced by expect() and not yet put, and until when to wait for them.
        self._expected = 0
        self._expected_until = 0.0

    def put(self, key: Hashable, item: T, urgent: bool = False) -> None:
        """Add one item (urgent ones jump ahead of the others); wakes the collector."""
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            lanes = self._queues.setdefault(key, _Lanes(deque(), deque()))
            (lanes.urgent if urgent else lanes.normal).append(_Entry(item, self._clock()))
            self._expected = max(0, self._expected - 1)
            self._cond.notify_all()

    def expect(self, count: int, within_s: float) -> None:
        """``count`` more items will be put within ``within_s`` seconds: a partial batch
        waits for them (or until then) rather than leave without them. An item that never
        comes costs at most ``within_s`` of extra wait, once."""
        if count <= 0:
            return
        with self._cond:
            self._expected += count
            self._expected_until = max(self._expected_until, self._clock() + within_s)

    def close(self) -> None:
        """Stop handing out batches once the pending items are drained."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[T]:
        """Close, and take every waiting item out (a worker handing its work back)."""
        with self._cond:
            self._closed = True
            taken = [e.item for lanes in self._queues.values()
                     for q in (lanes.urgent, lanes.normal) for e in q]  # fmt: skip
            self._queues.clear()
            self._cond.notify_all()
            return taken

    def pending(self) -> int:
        """How many items wait for a batch."""
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def poke(self) -> None:
        """Re-evaluate a waiting ``next_batch`` now (its ``idle`` answer may have changed)."""
        with self._cond:
            self._cond.notify_all()

    def next_batch(
        self, timeout: float | None = None, idle: Callable[[], bool] | None = None
    ) -> tuple[Hashable, list[T]] | None:
        """The next batch, or None when ``timeout`` passed (or closed) with nothing to give.

        ``idle`` is asked whenever a partial batch is considered: while it answers True the
        batch goes at once, since holding items back for company only adds latency when
        nothing else is running.
        """
        give_up = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                full = self._full_key()
                if full is not None:
                    return full, self._take(full)
                key = self._oldest_key()
                if key is not None:
                    queue = self._queues[key]
                    wait_for_more = 0.0 if idle is not None and idle() else self.max_wait_s
                    due = queue.oldest() + wait_for_more
                    if self._expected and not self._closed:
                        if self._clock() < self._expected_until:
                            due = max(due, self._expected_until)  # a burst is arriving
                        else:
                            self._expected = 0  # never came (handed back, another worker)
                    if self._clock() >= due or self._closed:
                        return key, self._take(key)
                    wake_at = due
                elif self._closed:
                    return None
                else:
                    wake_at = None
                if give_up is not None:
                    if self._clock() >= give_up:
                        return None
                    wake_at = give_up if wake_at is None else min(wake_at, give_up)
                wait = None if wake_at is None else max(0.0, wake_at - self._clock())
                self._cond.wait(wait)

    def _full_key(self) -> Hashable | None:
        for key, queue in self._queues.items():
            if len(queue) >= self.max_batch_size:
                return key
        return None

    def _oldest_key(self) -> Hashable | None:
        oldest: Hashable | None = None
        oldest_at = 0.0
        for key, queue in self._queues.items():
            if len(queue) and (oldest is None or queue.oldest() < oldest_at):
                oldest, oldest_at = key, queue.oldest()
        return oldest

    def _take(self, key: Hashable) -> list[T]:
        lanes = self._queues[key]
        taken: list[T] = []
        for queue in (lanes.urgent, lanes.normal):
            while queue and len(taken) < self.max_batch_size:
                taken.append(queue.popleft().item)
        return taken
