"""Per-GPU scaling: a worker that dies is restarted after a back-off, and the log says why."""

from __future__ import annotations

import logging
import sys
import time

import pytest

from services.cli.supervisor import ChildSpec, Supervisor


def test_dead_worker_restart_is_logged_with_reason_and_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor(backoff_initial_s=0.05, backoff_max_s=0.2, poll_interval_s=0.01)
    spec = ChildSpec("worker-1 (cuda:1, GPU 1)", [sys.executable, "-c", "raise SystemExit(3)"])
    with caplog.at_level(logging.INFO, logger="services.cli.supervisor"):
        sup.add(spec)
        deadline = time.monotonic() + 15
        while len(sup.exits) < 2 and time.monotonic() < deadline:
            sup.check()
            time.sleep(0.01)
        sup.stop()
    ended = [r.getMessage() for r in caplog.records if "ended with" in r.getMessage()]
    assert len(ended) >= 2, caplog.text
    assert ended[0].startswith("worker-1 (cuda:1, GPU 1) (pid ")
    assert "ended with exit code 3" in ended[0]
    assert ended[0].endswith("restarting in 0.05 s")
    assert ended[1].endswith("restarting in 0.1 s")  # the back-off doubled
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("started ")]
    assert len(started) >= 2  # it really was started again
