"""``visionq up`` and ``visionq workers``: the whole stack, or the GPU workers, supervised."""

from __future__ import annotations

import logging
import secrets
import sys
import time
from pathlib import Path

import httpx

from services.cli.gpus import parse_gpu_arg, visible_gpus
from services.cli.supervisor import ChildSpec, Supervisor, describe_returncode, worker_spec
from services.common.errors import ConfigError
from services.common.ports import PortUse, check_ports
from services.common.redis_server import RedisServer, RedisServerError, free_port
from services.common.settings import get_api_settings, get_worker_settings

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0
# How long `up` waits for a worker to serve: loading a model takes seconds; with
# VISIONQ_COMPILE, the first start compiles every batch bucket (a cold Inductor cache took
# 136 s for mobilenet_v3_small on 2 CPU cores), so it gets longer.
READY_TIMEOUT_S = 120.0
COMPILED_READY_TIMEOUT_S = 900.0


def worker_stop_timeout_s() -> float:
    """How long a supervisor waits for its workers after SIGTERM before SIGKILL: their own
    exit bound (batch time limit + margin; see ``WorkerSettings.exit_bound_s``) plus 5 s,
    as the pods' ``terminationGracePeriodSeconds`` (75 with the defaults). A shorter wait
    would kill a batch still in its forward pass, which then runs again elsewhere and
    counts a delivery against the job."""
    return get_worker_settings().exit_bound_s + 5.0


def plan_workers(gpus: list[str], workers: int | None) -> list[str | None]:
    """One worker per GPU (the first ``workers`` of them), or ``workers`` CPU workers."""
    if workers is not None and workers < 1:
        raise ConfigError("--workers must be at least 1")
    if not gpus:
        return [None] * (workers or 1)
    if workers is not None and workers > len(gpus):
        raise ConfigError(
            f"--workers {workers}: only {len(gpus)} GPU(s) visible ({', '.join(gpus)}); "
            "set CUDA_VISIBLE_DEVICES= to run CPU workers instead"
        )
    return list(gpus[:workers] if workers is not None else gpus)


def _probe_url(host: str, port: int) -> str:
    # A wildcard bind address is not something a client can connect to.
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in probe:
        probe = f"[{probe}]"
    return f"http://{probe}:{port}"


def _workers_reason(client: httpx.Client, url: str) -> str | None:
    try:
        resp = client.get(f"{url}/v1/models")
        if resp.status_code != 200:
            return None  # API keys on: /readyz alone decides
        models = resp.json().get("models", [])
    except (httpx.HTTPError, ValueError):
        return None
    if any(m.get("live_workers", 0) for m in models):
        return None
    return "no worker serves a model yet (loading)"


def _readyz_reason(client: httpx.Client, url: str) -> str | None:
    try:
        resp = client.get(f"{url}/readyz")
    except httpx.HTTPError as exc:
        return f"API not answering ({type(exc).__name__})"
    if resp.status_code == 200:
        # /readyz means "can queue work"; `up` also waits for its own workers to serve.
        return _workers_reason(client, url)
    try:
        body = resp.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        detail = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        detail = resp.text[:200]
    return f"/readyz answered {resp.status_code}: {detail}"


def _answered_by_us(client: httpx.Client, url: str, run_token: str) -> bool | None:
    """Whether /healthz at ``url`` echoes ``run_token``; None while nothing answers there."""
    try:
        resp = client.get(f"{url}/healthz")
    except httpx.HTTPError:
        return None
    try:
        body = resp.json() if resp.status_code == 200 else None
    except ValueError:
        body = None
    return isinstance(body, dict) and body.get("run_token") == run_token


def wait_ready(sup: Supervisor, url: str, timeout_s: float, run_token: str = "") -> str | None:
    """Poll /readyz of OUR API until 200; the reason it failed, or None when ready.

    ``run_token`` is what our API's /healthz must echo: a server that answers without it
    (another visionq, anything else on the port) is not taken for ours.
    """
    start = time.monotonic()
    last_report = start
    reason = "not asked yet"
    with httpx.Client(timeout=2.0) as client:
        while not sup.stopping:
            ended = sup.check(restart=False)
            if ended:
                e = ended[0]
                return f"{e.name} ended with {describe_returncode(e.returncode)} before ready"
            if run_token and _answered_by_us(client, url, run_token) is False:
                return f"{url} is answered by another server, not the API this run started"
            reason = _readyz_reason(client, url) or ""
            if not reason:
                return None
            now = time.monotonic()
            if now - start > timeout_s:
                return f"not ready after {timeout_s:.0f} s: {reason}"
            if now - last_report >= PROGRESS_EVERY_S:
                print(f"waiting for {url}/readyz ({now - start:.0f} s): {reason}", file=sys.stderr)
                last_report = now
            sup.wait(0.5)
    return None


def planned_ports(host: str, port: int, redis_port: int, workers: int) -> list[PortUse]:
    """Every port ``visionq up`` will bind: API, its metrics address, Redis, worker metrics."""
    uses = [PortUse(host, port, "API", "--port (make up ARGS='--port N')")]
    api = get_api_settings()
    if api.metrics_address is not None:
        m_host, m_port = api.metrics_address
        uses.append(PortUse(m_host, m_port, "API metrics", "VISIONQ_METRICS_BIND"))
    uses.append(PortUse("127.0.0.1", redis_port, "embedded Redis", "--redis-port (0 = free)"))
    worker = get_worker_settings()
    if worker.metrics_port:
        for index in range(workers):
            uses.append(
                PortUse(
                    worker.metrics_host,
                    worker.metrics_port + index,
                    f"worker {index} metrics",
                    "VISIONQ_METRICS_PORT (worker i uses it + i; 0 = off)",
                )
            )
    return uses


def _describe_workers(plan: list[str | None]) -> str:
    if all(gpu is None for gpu in plan):
        return "cpu"
    return ", ".join(f"GPU {gpu}" for gpu in plan if gpu is not None)


def run_up(
    host: str,
    port: int,
    redis_port: int,
    workers: int | None,
    redis_dir: Path | None = None,
    ready_timeout_s: float | None = None,
    api_workers: int = 1,
) -> int:
    """Start Redis (unless VISIONQ_REDIS_URL is set), the API and the workers; supervise.

    ``api_workers`` > 1 runs the API as ``visionq api --workers N`` (uvicorn processes).
    ``ready_timeout_s``: seconds to wait for a worker to serve (None: READY_TIMEOUT_S, or
    COMPILED_READY_TIMEOUT_S with VISIONQ_COMPILE on).
    """
    settings = get_api_settings()
    compiled = get_worker_settings().compile
    if ready_timeout_s is None:
        ready_timeout_s = COMPILED_READY_TIMEOUT_S if compiled else READY_TIMEOUT_S
    plan = plan_workers(visible_gpus(), workers)
    if port == 0:
        # Chosen here, not by the API's bind: `up` must know where to probe and what to
        # print, and a restarted API must come back on the same port.
        try:
            port = free_port(host)
        except OSError as exc:  # gaierror included: a name that does not resolve
            raise ConfigError(
                f"--host {host!r} cannot be bound ({exc}); pick another with --host"
            ) from None
    embedded = "redis_url" not in settings.model_fields_set
    check_ports(planned_ports(host, port, redis_port if embedded else 0, len(plan)))
    run_token = secrets.token_hex(16)
    sup = Supervisor(stop_timeout_s=worker_stop_timeout_s())
    sup.install_signal_handlers()
    redis_server: RedisServer | None = None
    failed = False
    try:
        if not embedded:
            redis_url = settings.redis_url
            redis_desc = f"{redis_url} (external)"
        else:
            # appendonly: queued jobs survive a Redis crash that the supervisor restarts.
            redis_server = RedisServer(redis_port, appendonly=True, dir=redis_dir).start()
            redis_url = redis_server.url
            redis_desc = f"{redis_url} (embedded, data in {redis_server.dir})"
        env = {"VISIONQ_REDIS_URL": redis_url}
        api_argv = [sys.executable, "-m", "services.cli.main", "api"]
        api_env = {**env, "VISIONQ_RUN_TOKEN": run_token}
        sup.add(
            ChildSpec(
                "api",
                [*api_argv, "--host", host, "--port", str(port), "--workers", str(api_workers)],
                api_env,
                stop_stage=0,
            )
        )
        for index, gpu in enumerate(plan):
            spec = worker_spec(index, gpu)
            sup.add(ChildSpec(spec.name, spec.argv, {**spec.env, **env}))
        url = _probe_url(host, port)
        problem = wait_ready(sup, url, ready_timeout_s, run_token)
        if problem is not None:
            if problem.startswith("not ready after"):
                problem += (
                    " (VISIONQ_COMPILE=1: the first start compiles every batch bucket; "
                    "later starts reuse Inductor's cache)"
                    if compiled
                    else ""
                ) + "; --ready-timeout SECONDS waits longer"
            print(f"visionq up failed: {problem}; stopping everything", file=sys.stderr)
            return 1
        if sup.stopping:
            return 0
        print(
            f"visionq is up: API at {url} (docs {url}/docs), Redis at {redis_desc}, "
            f"{len(plan)} worker(s) on {_describe_workers(plan)}. Ctrl-C stops it.",
            flush=True,
        )

        def keep_redis_alive() -> None:
            nonlocal failed
            if redis_server is None or redis_server.running:
                return
            logger.warning("embedded redis-server died; restarting it on the same port")
            try:
                redis_server.restart()
            except RedisServerError as exc:
                logger.error("cannot restart redis-server: %s", exc)
                failed = True
                sup.request_stop()

        sup.run(on_tick=keep_redis_alive)
        return 1 if failed else 0
    finally:
        sup.stop()  # workers first: their warm shutdown still needs Redis
        if redis_server is not None:
            redis_server.stop()


def run_workers(gpus_arg: str) -> int:
    """One pinned worker per chosen GPU, supervised until SIGINT/SIGTERM."""
    gpus = parse_gpu_arg(gpus_arg)
    sup = Supervisor(stop_timeout_s=worker_stop_timeout_s())
    sup.install_signal_handlers()
    for index, gpu in enumerate(gpus):
        sup.add(worker_spec(index, gpu))
    print(f"{len(gpus)} worker(s) on GPU {', '.join(gpus)}. Ctrl-C stops them.", flush=True)
    return sup.run()
