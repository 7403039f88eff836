"""The Celery task: thin by design. It hands the job to the runtime and waits."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.exceptions import Reject

from services.common.jobs import INTERACTIVE, TASK_NAME
from services.common.logs import log_context
from services.gpu_worker.runtime import Runtime
from services.gpu_worker.task_states import JobFailed, finish_task


def register_tasks(app: Celery, runtime: Runtime) -> None:
    """Bind ``visionq.infer`` on ``app`` to this process's runtime."""

    # Bound, and throws JobFailed: the task ends as its job did (task_states.py).
    @app.task(  # type: ignore[untyped-decorator]
        bind=True, name=TASK_NAME, acks_late=True, ignore_result=True, throws=(JobFailed,)
    )
    def infer(self: Any, job_id: str, model: str, lane: str = INTERACTIVE) -> str:
        with log_context(job_id=job_id):
            item = runtime.submit(job_id, model, urgent=lane == INTERACTIVE)
            item.done.wait()
            if item.requeue:
                # Not processed (shutting down, or Redis lost): give the message back intact.
                raise Reject("not processed here", requeue=True)
            return finish_task(self, item, runtime.store)
