"""The prepare thread's wait for its queued batch to start (services/gpu_worker/handover.py)."""

from __future__ import annotations

import queue
import threading
import time

from services.gpu_worker.handover import smooth, wait_until_taken


def _forward_then_take(
    taken: threading.Event, busy: threading.Event, queued: queue.Queue[str], run_s: float
) -> threading.Thread:
    """The inference thread: runs a forward for ``run_s``, then takes the queued batch."""

    def run() -> None:
        time.sleep(run_s)
        busy.clear()
        queued.get()
        taken.set()
        busy.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_the_wait_sleeps_until_the_take_even_when_an_earlier_take_left_the_flag_set() -> None:
    taken, busy, stop = threading.Event(), threading.Event(), threading.Event()
    queued: queue.Queue[str] = queue.Queue(maxsize=1)
    queued.put("next batch")
    busy.set()
    taken.set()  # the take of the batch ahead, which made room for this one
    inference = _forward_then_take(taken, busy, queued, run_s=0.6)
    start, cpu = time.monotonic(), time.thread_time()
    wait_until_taken(taken, busy, queued, stop)
    waited, spent = time.monotonic() - start, time.thread_time() - cpu
    inference.join()
    assert queued.empty()
    assert waited >= 0.55  # it did wait for the take
    # A spin would spend about the whole wait on the CPU; sleeping costs a few polls.
    assert spent < 0.1 * waited, f"{spent:.3f} CPU-s in a {waited:.3f} s wait"


def test_the_wait_ends_at_once_without_a_forward_or_a_queued_batch() -> None:
    taken, busy, stop = threading.Event(), threading.Event(), threading.Event()
    queued: queue.Queue[str] = queue.Queue(maxsize=1)
    queued.put("batch")
    start = time.monotonic()
    wait_until_taken(taken, busy, queued, stop)  # nothing running: it will be taken at once
    busy.set()
    queued.get()
    wait_until_taken(taken, busy, queued, stop)  # nothing queued
    assert time.monotonic() - start < 0.05


def test_a_stop_ends_the_wait() -> None:
    taken, busy, stop = threading.Event(), threading.Event(), threading.Event()
    queued: queue.Queue[str] = queue.Queue(maxsize=1)
    queued.put("batch")
    busy.set()
    threading.Timer(0.3, stop.set).start()
    start = time.monotonic()
    wait_until_taken(taken, busy, queued, stop, poll_s=0.05)
    assert 0.25 <= time.monotonic() - start < 2.0
    assert not queued.empty()


def test_smooth() -> None:
    assert smooth(0.0, 4.0) == 4.0
    assert smooth(4.0, 9.0) == 5.0
