"""How a job's end becomes its Celery task's end (what Flower shows)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Ignore

from services.common.jobs import Status
from services.gpu_worker.task_states import JobFailed, end_task


class FakeTask:
    """The two things end_task uses of a bound Celery task: its app's config and send_event."""

    def __init__(self, events: bool) -> None:
        self.app = SimpleNamespace(conf=SimpleNamespace(worker_send_task_events=events))
        self.request = SimpleNamespace(id="job-1")
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_event(self, type_: str, **fields: Any) -> None:
        self.sent.append((type_, fields))


def test_succeeded_returns_its_status() -> None:
    task = FakeTask(events=True)
    assert end_task(task, Status.SUCCEEDED.value, None) == "succeeded"
    assert task.sent == []


def test_failed_raises_with_code_and_message() -> None:
    error = {"code": "invalid_image", "message": "cannot decode: truncated"}
    with pytest.raises(JobFailed, match=r"^invalid_image: cannot decode: truncated$"):
        end_task(FakeTask(events=True), Status.FAILED.value, error)


@pytest.mark.parametrize(("status", "expired"), [("expired", True), ("cancelled", False)])
def test_expired_and_cancelled_are_revoked(status: str, expired: bool) -> None:
    task = FakeTask(events=True)
    with pytest.raises(Ignore):
        end_task(task, status, None)
    assert [(t, f["expired"], f["terminated"]) for t, f in task.sent] == [
        ("task-revoked", expired, False)
    ]


def test_no_revoked_event_when_events_are_off() -> None:
    task = FakeTask(events=False)
    with pytest.raises(Ignore):
        end_task(task, "cancelled", None)
    assert task.sent == []


def test_a_record_gone_is_reported_unknown() -> None:
    assert end_task(FakeTask(events=True), "", None) == "unknown"
