"""The Celery task: thin by design. It hands the job to the runtime and waits."""

from __future__ import annotations

from celery import Celery
from celery.exceptions import Reject

from services.common.jobs import INTERACTIVE, TASK_NAME
from services.common.logs import log_context
from services.gpu_worker.runtime import Runtime


def register_tasks(app: Celery, runtime: Runtime) -> None:
    """Bind ``visionq.infer`` on ``app`` to this process's runtime."""

    @app.task(name=TASK_NAME, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def infer(job_id: str, model: str, lane: str = INTERACTIVE) -> None:
        with log_context(job_id=job_id):
            item = runtime.submit(job_id, model, urgent=lane == INTERACTIVE)
            item.done.wait()
            if item.requeue:
                # Not processed (shutting down, or Redis lost): give the message back intact.
                raise Reject("not processed here", requeue=True)
