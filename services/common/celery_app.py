"""The Celery app both sides share: the API publishes with it, the worker consumes with it.

Celery's own tools load it too: ``celery -A services.common.celery_app inspect stats``
(``--broker`` or ``VISIONQ_REDIS_URL`` names the Redis), and Flower the same way.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from services.common.settings import CommonSettings, get_worker_settings


def transport_options(settings: CommonSettings, restore_interval_s: float = 2.0) -> dict[str, Any]:
    """kombu Redis transport options; the visibility timeout must match on every app."""
    timeout = settings.redis_timeout_s
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu >= 5.7 sweeps unacked messages every interval * throttle seconds; with the
        # default (10 * 10) a killed worker's jobs would wait ~100 s past their timeout.
        "unacked_restore_interval": restore_interval_s,
        "unacked_restore_throttle": 1,
        # A publish with Redis down must fail in about a second, not hang the request.
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
        "socket_connect_timeout": timeout,
        "socket_timeout": max(timeout, 5.0),
        "health_check_interval": 10,
    }


def make_celery(
    settings: CommonSettings, restore_interval_s: float = 2.0, events: bool = False
) -> Celery:
    """A Celery app for the given settings; results live in our own job records.

    ``events`` makes a worker send task events (received, started, succeeded, failed):
    with its heartbeats (``without_heartbeat=False`` at start) they are what Flower shows.
    """
    app = Celery("visionq", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options(settings, restore_interval_s),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        # Our own delivery counter fails a job that keeps killing workers (claim.lua), so a
        # lost worker's message may be re-queued without looping forever.
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=events,
        # The API publishes no task-sent event: Flower learns of a job when a worker takes
        # it, and the queue depth is on the Grafana dashboard.
        task_send_sent_event=False,
        worker_soft_shutdown_timeout=30.0,
        worker_enable_soft_shutdown_on_idle=False,
        broker_heartbeat=0,
    )
    return app


def __getattr__(name: str) -> Any:
    # ``celery -A services.common.celery_app`` looks up ``app``: build it on first use from
    # the environment, so importing this module never reads settings.
    if name == "app":
        settings = get_worker_settings()
        built = make_celery(settings, settings.unacked_restore_interval_s, settings.celery_events)
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
