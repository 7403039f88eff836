"""The Celery task: thin by design. It hands the job to the runtime and waits.

The hand-back of a warm shutdown hangs off Celery's consumer blueprint (``HandBackStep``),
so every warm shutdown uses it: SIGTERM, SIGINT, ``celery control shutdown``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from celery.exceptions import Reject

from services.common.jobs import INTERACTIVE, TASK_NAME
from services.common.logs import log_context
from services.common.protocol.scripts import AckKeys
from services.gpu_worker.broker import TRANSPORT_PATH
from services.gpu_worker.handback import UNACKED_INDEX_KEY, UNACKED_KEY, held_key
from services.gpu_worker.runtime import Runtime
from services.gpu_worker.task_states import JobFailed, finish_task

logger = logging.getLogger(__name__)


class HandBackStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """At a warm shutdown: stop consuming, then hand every job not started back at once.

    Celery's consumer blueprint stops its steps in reverse order, this one first, before
    the pool waits for its tasks; without it the pool would run every reserved job first.
    A broker reconnect also restarts the blueprint (``stop`` with the blueprint still
    running): that is not a shutdown, and nothing is handed back then.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.runtime: Runtime | None = None

    def stop(self, parent: Any) -> None:
        if parent.blueprint.state == bootsteps.RUN or self.runtime is None:
            return
        if parent.task_consumer is not None:
            try:
                parent.task_consumer.cancel()
            except Exception as exc:  # the connection may be gone; the hand-back goes on
                logger.debug("cancelling the task consumer failed: %s", exc)
        self.runtime.hand_back()

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)


HANDED_BACK = "not processed here"


class HandBackLogFilter(logging.Filter):
    """Celery logs every rejected task as a WARNING with a traceback; a hand-back (warm
    shutdown, Redis lost) is routine, so it becomes one INFO line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, Reject) and exc.requeue and str(exc.reason) == HANDED_BACK:
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def register_tasks(app: Celery, runtime: Runtime) -> None:
    """Bind ``visionq.infer`` on ``app`` to this process's runtime; add the hand-back step."""

    # With our broker transport, a batch's results and acks are stored in one step
    # (acks.py); its QoS then skips the Redis half of Celery's per-message ack.
    acked = app.conf.broker_transport == TRANSPORT_PATH
    if acked:
        runtime.store.acks = AckKeys(UNACKED_INDEX_KEY, UNACKED_KEY, held_key(runtime.worker_id))

    # Bound, and throws JobFailed: the task ends as its job did (task_states.py).
    @app.task(  # type: ignore[untyped-decorator]
        bind=True, name=TASK_NAME, acks_late=True, ignore_result=True, throws=(JobFailed,)
    )
    def infer(self: Any, job_id: str, model: str, lane: str = INTERACTIVE) -> str:
        with log_context(job_id=job_id):
            tag = (self.request.properties or {}).get("delivery_tag") or "" if acked else ""
            item = runtime.submit(job_id, model, urgent=lane == INTERACTIVE, delivery_tag=tag)
            item.done.wait()
            if item.requeue:
                # Not processed (shutting down, or Redis lost): give the message back intact.
                raise Reject(HANDED_BACK, requeue=True)
            return finish_task(self, item, runtime.store)

    class BoundHandBack(HandBackStep):
        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.runtime = runtime

    app.steps["consumer"].add(BoundHandBack)
    # celery.app.trace logs task outcomes (trace.py `_log_error`).
    trace_log = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, HandBackLogFilter) for f in trace_log.filters):
        trace_log.addFilter(HandBackLogFilter())
