"""The Celery task: thin by design. It hands the job to the runtime and waits.

The task ends the way its job ended, so that Celery's events (and Flower) tell the truth:
``succeeded`` returns (SUCCESS), ``failed`` raises :class:`JobFailed` (FAILURE, with the
error code and message), ``expired`` and ``cancelled`` send ``task-revoked`` (REVOKED, as
Celery's own expiry and revoke do) and raise ``Ignore``. Every one of these acks the
message: the outcome is already stored in the job record, which stays the source of truth.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Ignore, Reject

from services.common.jobs import INTERACTIVE, TASK_NAME, Status
from services.gpu_worker.runtime import Runtime

logger = logging.getLogger(__name__)


class JobFailed(Exception):
    """Raised by the task of a job that ended ``failed``: its args are ``"code: message"``."""


def end_task(task: Any, status: str, error: dict[str, str] | None) -> str:
    """Finish a task as its job ended: return the status, or raise (see the module doc)."""
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


def register_tasks(app: Celery, runtime: Runtime) -> None:
    """Bind ``visionq.infer`` on ``app`` to this process's runtime."""

    @app.task(  # type: ignore[untyped-decorator]
        bind=True, name=TASK_NAME, acks_late=True, ignore_result=True, throws=(JobFailed,)
    )
    def infer(self: Any, job_id: str, model: str, lane: str = INTERACTIVE) -> str:
        item = runtime.submit(job_id, model, urgent=lane == INTERACTIVE)
        item.done.wait()
        if item.requeue:
            # Not processed (shutting down, or Redis lost): give the message back intact.
            raise Reject("not processed here", requeue=True)
        if item.outcome is not None:
            return end_task(self, item.outcome.status.value, item.outcome.error)
        # Ended before this delivery (cancelled, expired, poison, a redelivery of a finished
        # job): rare, so one read of the record here costs nothing on the hot path.
        try:
            status, error = runtime.store.ended_as(job_id)
        except redis.RedisError as exc:
            logger.warning("job %s ended earlier; its status is unreadable: %s", job_id, exc)
            return "unknown"
        return end_task(self, status, error)
