"""A slow, resetting and stalling link between the services and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.common.redis_server import RedisServer
from tests.conftest import TEST_MODEL
from tests.faults.conftest import MakeStack, record_figure
from tests.faults.proxy import FaultProxy
from tests.images import jpeg
from tests.integration.helpers import files, predict
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture()
def proxy(fault_redis: RedisServer) -> Iterator[FaultProxy]:
    p = FaultProxy(fault_redis.port).start()
    try:
        yield p
    finally:
        p.stop()


def _timed_predict(stack: Stack, seed: int) -> tuple[int, float]:
    start = time.monotonic()
    status = predict(stack.url, files((f"{seed}.jpg", jpeg(seed, (96, 96))))).status_code
    return status, time.monotonic() - start


def _burst(stack: Stack, n: int) -> list[int]:
    with ThreadPoolExecutor(n) as pool:
        return [s for s, _ in pool.map(lambda i: _timed_predict(stack, 100 + i), range(n))]


def test_slow_resetting_and_stalled_link(
    make_stack: MakeStack, proxy: FaultProxy, tmp_path: Path
) -> None:
    stack = make_stack(VISIONQ_VISIBILITY_TIMEOUT_S="10", VISIONQ_BATCH_TIME_LIMIT_S="3")
    stack.redis_url = f"redis://127.0.0.1:{proxy.port}/0"
    stack.start_api()
    worker = stack.start_worker(models=TEST_MODEL)
    stack.wait_ready()
    assert _timed_predict(stack, 1)[0] == 200

    proxy.latency_s = 0.05  # every hop 50 ms slower: still served
    assert _timed_predict(stack, 2)[0] == 200
    proxy.latency_s = 0.0

    proxy.reset_all()  # every connection torn down at once
    statuses = [_timed_predict(stack, 3 + i)[0] for i in range(3)]
    assert statuses[-1] == 200, statuses  # reconnects by itself

    proxy.stalled = True  # bytes stop moving; sockets stay open
    status, took = _timed_predict(stack, 10)
    assert status in (503, 504)
    assert took < 15, took  # the API's own Redis timeout, not a hang
    record_figure("stalled_link_answer_s", took)
    proxy.stalled = False
    proxy.reset_all()  # the stalled connections die, as a real dead link's eventually do

    healed = time.monotonic()
    deadline = healed + 60
    while time.monotonic() < deadline:
        if _timed_predict(stack, 20)[0] == 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("not serving again within 60 s:\n" + stack.logs())
    record_figure("link_healed_to_first_result_s", time.monotonic() - healed)
    assert _burst(stack, 8) == [200] * 8  # no stuck worker: a burst is served
    assert worker.alive()
