"""How a loaded worker forms its batches (default settings; fault injection slows a forward)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import TEST_MODEL
from tests.faults.conftest import MakeStack, fault_jpeg
from tests.images import jpeg
from tests.integration.helpers import files, job, submit, wait_jobs

pytestmark = pytest.mark.integration


def _wait_status(url: str, job_id: str, status: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while job(url, job_id)["status"] != status:
        assert time.monotonic() < deadline, f"job {job_id} never reached {status}"
        time.sleep(0.02)


def test_the_next_batch_gathers_everything_that_arrives_during_a_forward(
    default_stack: MakeStack,
) -> None:
    """One batch waits decoded behind the running one. Where preparing a batch takes well
    under a forward pass (here a forward stalled 1.5 s), the one after it is formed only when
    the queued batch starts, so it holds everything that came in meanwhile. Formed earlier,
    it would split those jobs between two batches (and the mean batch under load shrinks)."""
    stack = default_stack()
    stack.start_with_worker(models=TEST_MODEL)
    (slow,) = submit(stack.url, files(("slow.jpg", fault_jpeg("slow=1.5"))))
    _wait_status(stack.url, slow, "running")
    (queued,) = submit(stack.url, files(("queued.jpg", jpeg(1, (96, 96)))))
    _wait_status(stack.url, queued, "running")  # claimed: decoded and waiting its turn
    first = submit(stack.url, files(("a.jpg", jpeg(2, (96, 96)))))
    time.sleep(0.2)  # 40x VISIONQ_MAX_WAIT_MS: it would have gone as a batch of its own
    rest = submit(stack.url, files(*[(f"b{i}.jpg", jpeg(3 + i, (96, 96))) for i in range(3)]))
    assert job(stack.url, slow)["status"] == "running", "the slow forward ended too soon"
    records = wait_jobs(stack.url, [slow, queued, *first, *rest], timeout=60)
    assert [r["status"] for r in records] == ["succeeded"] * 6, records
    sizes = [r["timings"]["batch_size"] for r in records]
    assert sizes == [1, 1, 4, 4, 4, 4], sizes
