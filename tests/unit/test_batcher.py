"""The batcher alone: a plain structure, driven by a fake clock and real threads."""

from __future__ import annotations

import threading

import pytest

from services.gpu_worker.batcher import Batcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_full_batch_is_released_at_once() -> None:
    b: Batcher[int] = Batcher(3, max_wait_s=60.0)
    for i in range(3):
        b.put("m", i)
    assert b.next_batch(timeout=0) == ("m", [0, 1, 2])


def test_partial_batch_is_held_until_deadline() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(4, max_wait_s=0.5, clock=clock)
    b.put("m", 1)
    b.put("m", 2)
    assert b.next_batch(timeout=0) is None  # not full, not due: held back
    clock.now += 0.5
    assert b.next_batch(timeout=0) == ("m", [1, 2])


def test_never_returns_empty_and_times_out() -> None:
    b: Batcher[int] = Batcher(4, max_wait_s=0.0)
    assert b.next_batch(timeout=0.01) is None
    b.put("m", 7)
    assert b.next_batch(timeout=0.01) == ("m", [7])
    assert b.next_batch(timeout=0.01) is None


def test_overflow_goes_to_the_next_batch_in_order() -> None:
    b: Batcher[int] = Batcher(4, max_wait_s=0.0)
    for i in range(10):
        b.put("m", i)
    assert b.next_batch(0) == ("m", [0, 1, 2, 3])
    assert b.next_batch(0) == ("m", [4, 5, 6, 7])
    assert b.next_batch(0) == ("m", [8, 9])


def test_a_batch_is_one_key_oldest_first() -> None:
    clock = FakeClock()
    b: Batcher[str] = Batcher(8, max_wait_s=1.0, clock=clock)
    b.put("a", "a1")
    clock.now += 0.1
    b.put("b", "b1")
    b.put("a", "a2")
    clock.now += 1.0
    assert b.next_batch(0) == ("a", ["a1", "a2"])
    assert b.next_batch(0) == ("b", ["b1"])


def test_full_key_wins_over_older_partial_key() -> None:
    clock = FakeClock()
    b: Batcher[str] = Batcher(2, max_wait_s=10.0, clock=clock)
    b.put("a", "a1")
    b.put("b", "b1")
    b.put("b", "b2")
    assert b.next_batch(0) == ("b", ["b1", "b2"])


def test_waiting_consumer_wakes_when_batch_fills() -> None:
    b: Batcher[int] = Batcher(3, max_wait_s=60.0)
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(b.next_batch(timeout=30)))
    thread.start()
    b.put("m", 1)
    b.put("m", 2)
    thread.join(0.2)
    assert thread.is_alive()  # two of three, long deadline: still held
    b.put("m", 3)
    thread.join(10)
    assert got == [("m", [1, 2, 3])]


def test_close_drains_then_stops() -> None:
    b: Batcher[int] = Batcher(4, max_wait_s=60.0)
    b.put("m", 1)
    b.close()
    assert b.next_batch() == ("m", [1])
    assert b.next_batch() is None
    with pytest.raises(RuntimeError):
        b.put("m", 2)


@pytest.mark.parametrize(("size", "wait"), [(0, 1.0), (1, -0.1)])
def test_bad_limits_are_refused(size: int, wait: float) -> None:
    with pytest.raises(ValueError):
        Batcher(size, wait)


def test_idle_caller_can_skip_the_wait() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(8, max_wait_s=10.0, clock=clock)
    b.put("m", 1)
    assert b.next_batch(timeout=0) is None  # the default wait holds it back
    assert b.next_batch(timeout=0, idle=lambda: False) is None
    assert b.next_batch(timeout=0, idle=lambda: True) == ("m", [1])


def test_urgent_items_jump_ahead_of_bulk_ones() -> None:
    b: Batcher[str] = Batcher(3, max_wait_s=0.0)
    for i in range(5):
        b.put("m", f"bulk{i}")
    b.put("m", "interactive", urgent=True)
    assert b.next_batch(0) == ("m", ["interactive", "bulk0", "bulk1"])
    assert b.next_batch(0) == ("m", ["bulk2", "bulk3", "bulk4"])


def test_drain_takes_everything_and_closes() -> None:
    b: Batcher[str] = Batcher(2, max_wait_s=10.0)
    b.put("a", "a1")
    b.put("b", "b1")
    b.put("a", "a2", urgent=True)
    assert sorted(b.drain()) == ["a1", "a2", "b1"]
    assert b.pending() == 0
    assert b.next_batch(timeout=0) is None  # nothing is handed out after a hand-back
    with pytest.raises(RuntimeError):
        b.put("a", "late")


def test_a_partial_batch_waits_for_an_announced_burst() -> None:
    """A bulk delivery of 3 is being handed in one message at a time: the batch that has the
    first item waits for the others past max_wait (and even when idle) instead of leaving."""
    clock = FakeClock()
    b: Batcher[int] = Batcher(4, max_wait_s=0.005, clock=clock)
    b.expect(3, within_s=0.05)
    b.put("m", 1)
    clock.now += 0.01  # past max_wait
    assert b.next_batch(timeout=0) is None
    assert b.next_batch(timeout=0, idle=lambda: True) is None
    b.put("m", 2)
    b.put("m", 3)
    b.put("m", 4)
    assert b.next_batch(timeout=0) == ("m", [1, 2, 3, 4])  # full
    b.expect(2, within_s=0.05)
    b.put("m", 5)
    b.put("m", 6)  # all announced items came: the usual rule again
    clock.now += 0.006
    assert b.next_batch(timeout=0) == ("m", [5, 6])


def test_an_announced_item_that_never_comes_costs_one_wait() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(4, max_wait_s=0.005, clock=clock)
    b.expect(2, within_s=0.03)
    b.put("m", 1)
    clock.now += 0.01
    assert b.next_batch(timeout=0) is None  # still expecting one
    clock.now += 0.03
    assert b.next_batch(timeout=0) == ("m", [1])  # gave up on it
    b.put("m", 2)
    clock.now += 0.006
    assert b.next_batch(timeout=0) == ("m", [2])  # the stale expectation is gone
