"""Start one worker process: pin the device, load the models, then consume with Celery."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from typing import TYPE_CHECKING

from services.common.errors import ConfigError
from services.gpu_worker.device import pin_device

if TYPE_CHECKING:
    from services.gpu_worker.handback import HandBack
    from services.gpu_worker.reaper import Reaper

logger = logging.getLogger(__name__)


def _logging_is_configured(**_: object) -> None:
    """Celery's ``setup_logging`` receiver: logging is services.common.logs' job."""


def run_worker(device: str, models: list[str] | None, index: int) -> int:
    """Run a worker until it is told to stop; returns its exit code."""
    # Pin before torch is imported anywhere in this process (fork + CUDA rule).
    plan = pin_device(device)
    # A worker serves its own registry; in a multiprocess folder shared with an API its
    # series would also leak into the API's /metrics and be counted twice.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

    import redis

    from services.common.redis_memory import read_memory
    from services.common.settings import get_worker_settings

    # Redis first, before the heavy imports and the model load: a wrong password or an
    # evicting Redis stops the worker in a second with the reason.
    settings = get_worker_settings()
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=max(settings.redis_timeout_s, 5.0),
        health_check_interval=10,
    )
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        # Retrying can't fix credentials: stop with the reason instead of looping.
        raise ConfigError(f"VISIONQ_REDIS_URL: Redis refused the credentials ({exc})") from exc
    except redis.RedisError:
        pass  # not up yet: Celery and the runtime retry until it is
    # An evicting Redis would drop the jobs this worker is to run: refuse it (ConfigError).
    read_memory(client, check=settings.redis_policy_check)

    from models.specs import load_registry
    from services.common.celery_app import make_celery
    from services.common.jobs import LANES, queue_name
    from services.common.ports import PortUse, describe_taken
    from services.gpu_worker.broker import TRANSPORT_PATH, on_bulk_delivery, record_holdings
    from services.gpu_worker.gpu_stats import start_gpu_sampler
    from services.gpu_worker.handback import HandBack, fence_key, held_key
    from services.gpu_worker.heartbeat import Heartbeat
    from services.gpu_worker.metrics import WorkerMetrics
    from services.gpu_worker.probe_server import start_probe_server
    from services.gpu_worker.reaper import Reaper
    from services.gpu_worker.runtime import Runtime
    from services.gpu_worker.store import JobStore
    from services.gpu_worker.sweeper import LostMessageSweeper
    from services.gpu_worker.tasks import register_tasks

    update: dict[str, object] = {"worker_index": index}
    if models:
        update["models"] = models
    settings = settings.model_copy(update=update)
    registry = load_registry(settings.models_file)
    unknown = [m for m in settings.models if m not in registry]
    if unknown:
        raise ConfigError(
            f"unknown model(s) {', '.join(unknown)}: built-in are {', '.join(sorted(registry))}; "
            "declare others in VISIONQ_MODELS_FILE"
        )
    specs = {name: registry[name] for name in settings.models}
    from services.common import tracing

    tracing.setup("visionq-worker")  # off unless OTEL_* ask for it

    # Unique per process start: a restarted container has the same host name and often the
    # same PID (1), and must not inherit the fence of the process it replaces.
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{plan.label}:{secrets.token_hex(3)}"
    serving = threading.Event()  # /readyz on the metrics port: 200 while set
    if settings.metrics_port:
        # Bind before the (slow) model load: a taken port ends this process at once with
        # one line, instead of a traceback after loading and a supervisor restart loop.
        port = settings.metrics_port + index
        try:
            start_probe_server(port, settings.metrics_host, serving.is_set)
        except OSError as exc:
            use = PortUse(settings.metrics_host, port, f"worker {index} metrics",
                          "VISIONQ_METRICS_PORT (worker i uses it + i; 0 = off)")  # fmt: skip
            raise ConfigError(describe_taken(use, exc)) from exc
        host = settings.metrics_host
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address, as in a URL
        logger.info("worker metrics on http://%s:%d/metrics (probes: /readyz, /healthz)",
                    shown, port)  # fmt: skip
    metrics = WorkerMetrics(settings.max_batch_size)
    store = JobStore(client, settings.result_ttl_s, settings.max_deliveries)
    handback = HandBack(client)
    runtime = Runtime(settings, plan, specs, store, metrics, worker_id, handback)
    try:
        runtime.start()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"worker could not load its models: {exc}") from exc
    label = runtime.device_label
    metrics.mark_up(label, {name: served.task for name, served in runtime.served.items()})
    serving.set()
    gpu_sampler = start_gpu_sampler(label, metrics)

    weights = {
        name: {
            "source": src.kind,
            "location": src.location,
            "random": src.is_random,
        }
        for name, served in runtime.served.items()
        if (src := served.handler.weights_source) is not None
    }
    heartbeat = Heartbeat(
        client,
        worker_id,
        {
            "device": label,
            "models": list(specs),
            "weights": weights,
            "max_batch_size": settings.max_batch_size,
        },
        settings.heartbeat_interval_s,
        on_fenced=_exit_fenced,
    )
    app = make_celery(settings, settings.unacked_restore_interval_s, settings.celery_events)
    from celery import signals

    # The CLI configured logging (text or JSON) before we got here: a receiver on this
    # signal tells Celery to leave the handlers alone and not redirect stdout.
    signals.setup_logging.connect(_logging_is_configured, weak=False)
    app.conf.broker_transport = TRANSPORT_PATH
    register_tasks(app, runtime)
    # Threads, not prefork: task threads only wait on the in-process batcher, so one forward
    # runs at a time. Two batches in flight (one running, one decoded or gathering): the
    # prefetch (= concurrency, multiplier 1) is what a dead or stopping worker holds.
    concurrency = 2 * settings.max_batch_size
    record_holdings(held_key(worker_id), fence_key(worker_id), _exit_fenced, client)
    # A bulk delivery's messages reach the batcher one by one through Celery: the batch
    # being formed waits for them (BULK_ARRIVAL_S each) instead of leaving with a few.
    on_bulk_delivery(lambda n: runtime.batcher.expect(n, n * BULK_ARRIVAL_S))
    worker = app.Worker(
        # The PID keeps two workers on one host (same device label and index) apart.
        hostname=f"visionq-{label}-{index}-{os.getpid()}@{socket.gethostname()}",
        pool_cls="threads",
        concurrency=concurrency,
        queues=[queue_name(m, lane) for lane in LANES for m in specs],
        loglevel=settings.log_level,
        without_gossip=True,
        without_mingle=True,
        # Celery's worker heartbeat is an event: Flower counts a worker online by it.
        without_heartbeat=not settings.celery_events,
        optimization="fair",
        # The start-up banner is printed, not logged: it would break one-JSON-per-line.
        quiet=settings.log_format == "json",
    )
    sweeper = LostMessageSweeper(
        client,
        app,
        grace_s=min(float(settings.visibility_timeout_s), SWEEP_GRACE_S),
        interval_s=SWEEP_INTERVAL_S,
        owner=worker_id,
    )
    interval = settings.heartbeat_interval_s
    reaper = Reaper(
        client,
        worker_id,
        poll_s=min(1.0, interval / 2),
        confirm_s=2 * interval,
        on_reaped=lambda _worker, _jobs: sweeper.sweep_soon(),
    )
    heartbeat.start()
    reaper.register()
    sweeper.start()
    reaper.start()
    clean = False
    try:
        worker.start()
        clean = True
    finally:
        reaper.stop()
        sweeper.stop()
        if clean:
            _leave(reaper, handback, worker_id)
        heartbeat.stop()
        serving.clear()
        metrics.worker_up.labels(label).set(0)
        if gpu_sampler is not None:
            gpu_sampler.stop()
        runtime.stop()
    return int(worker.exitcode or 0)


# How long each message of a bulk delivery may take to reach the batcher through Celery's
# consumer and the task pool (measured 0.3-0.5 ms on the 2-core CPU box under load).
BULK_ARRIVAL_S = 0.002

# The lost-message sweeper looks at jobs queued longer than this (or the visibility
# timeout, if shorter) every SWEEP_INTERVAL_S; after a worker death it looks at once.
SWEEP_GRACE_S = 30.0
SWEEP_INTERVAL_S = 10.0


def _exit_fenced() -> None:
    # Declared dead while paused: its messages run elsewhere now. Leave without acking,
    # storing or restoring anything; a supervisor starts a fresh worker.
    logging.shutdown()
    os._exit(3)


def _leave(reaper: Reaper, handback: HandBack, worker_id: str) -> None:
    """After a clean stop: give back anything still held, then leave the worker index."""
    import redis

    try:
        left = handback.restore_held(worker_id)
        if left:
            logger.warning("handed back %d message(s) still held at exit", len(left))
        reaper.deregister()
    except redis.RedisError as exc:
        logger.warning("could not leave the worker index (%s); the reaper will", exc)
