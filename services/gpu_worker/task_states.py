"""How a visionq task ends, so that Celery's events (and Flower) tell the job's truth.

Our task returns normally after storing a failure, which Celery would report as SUCCESS.
Instead it ends the way its job ended: ``succeeded`` returns the status (SUCCESS),
``failed`` raises :class:`JobFailed` with ``"<code>: <message>"`` (FAILURE; listed in the
task's ``throws``, so Celery logs it at INFO without a traceback), ``expired`` and
``cancelled`` send ``task-revoked`` (REVOKED, as Celery's own expiry and revoke do) and
raise ``Ignore``. Every one of these acks the message: the outcome is already stored in
the job record, which stays the source of truth.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.exceptions import Ignore

from services.common.jobs import Status
from services.gpu_worker.prepare import WorkItem
from services.gpu_worker.store import JobStore

logger = logging.getLogger(__name__)


class JobFailed(Exception):
    """Raised by the task of a job that ended ``failed``: its args are ``"code: message"``."""


def end_task(task: Any, status: str, error: dict[str, str] | None) -> str:
    """Finish a bound task as its job ended: return the status, or raise (module doc)."""
    if status == Status.FAILED:
        err = error or {}
        raise JobFailed(f"{err.get('code', 'failed')}: {err.get('message', '')}")
    if status in (Status.EXPIRED, Status.CANCELLED):
        if task.app.conf.worker_send_task_events:
            try:
                task.send_event(
                    "task-revoked",
                    retry=False,
                    terminated=False,
                    signum=None,
                    expired=status == Status.EXPIRED,
                )
            except Exception as exc:  # an event lost is only a monitor's loss
                logger.warning("could not send task-revoked for %s: %s", task.request.id, exc)
        raise Ignore()
    return status or "unknown"


def finish_task(task: Any, item: WorkItem, store: JobStore) -> str:
    """End the task of a processed ``item`` as its job ended (see :func:`end_task`)."""
    if item.outcome is not None:
        return end_task(task, item.outcome.status.value, item.outcome.error)
    # Ended before this delivery (cancelled, expired, poison, a redelivery of a finished
    # job): rare, so one read of the record here costs nothing on the hot path.
    try:
        status, error = store.ended_as(item.job_id)
    except redis.RedisError as exc:
        logger.warning("job %s ended earlier; its status is unreadable: %s", item.job_id, exc)
        return "unknown"
    return end_task(task, status, error)
