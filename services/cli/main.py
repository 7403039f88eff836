"""The ``visionq`` command line: argparse subcommands; heavy imports happen inside each one."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cli import argtypes
from services.common.errors import ConfigError

if TYPE_CHECKING:
    from services.common.settings import ApiSettings

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def _device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: write auto, cpu, cuda or cuda:N")
    return text


def _models(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def cmd_up(args: argparse.Namespace) -> int:
    """Run the whole stack."""
    from services.cli.up import run_up

    return run_up(
        args.host,
        args.port,
        args.redis_port,
        args.workers,
        args.redis_dir,
        ready_timeout_s=args.ready_timeout,
        api_workers=args.api_workers,
    )


def cmd_api(args: argparse.Namespace) -> int:
    """Run the API server in this process (or in ``--workers`` uvicorn processes)."""
    import uvicorn

    from services.common.ports import PortUse, bind_listener, check_ports
    from services.common.settings import get_api_settings

    settings = get_api_settings()  # fail here, with exit 2, rather than inside uvicorn
    api = PortUse(args.host, args.port, "API", "--port")
    uses = [api]
    if settings.metrics_address is not None:
        host, port = settings.metrics_address
        uses.append(PortUse(host, port, "API metrics", "VISIONQ_METRICS_BIND"))
    check_ports(uses)
    _refuse_evicting_redis(settings)
    _fresh_multiproc_dir(args.workers)
    app = "services.api.app:create_app"
    options: dict[str, Any] = {
        "factory": True,
        "host": args.host,
        "port": args.port,
        "log_level": settings.log_level.lower(),
        # SIGTERM: stop accepting, let waiting requests finish for this long, then exit.
        "timeout_graceful_shutdown": settings.graceful_shutdown_timeout_s,
        # Behind a proxy the client address (the rate limit's bucket) and scheme come from
        # X-Forwarded-For / -Proto, but only when the peer is one of these.
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        # uvicorn's own config would give its loggers their own text handlers; without it
        # they reach the root handler that services.common.logs set up (text or JSON).
        "log_config": None,
        # One INFO line per request buries what matters; DEBUG brings them back.
        "access_log": settings.log_level == "DEBUG",
    }
    if args.workers > 1:
        # uvicorn binds the port in this process, before any app starts, and exits on failure.
        # Each serving process dies with this supervisor (no orphan left on the port).
        uvicorn.run("services.cli.api_child:create_app", workers=args.workers, **options)
        return 0
    # One process: bind before uvicorn starts the app. A bind failure inside uvicorn comes
    # after the lifespan started, and its shutdown can hang with Redis connected.
    sock = bind_listener(api)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    return 0 if server.started else 3  # 3: uvicorn's own code for a failed start-up


def _refuse_evicting_redis(settings: ApiSettings) -> None:
    """Exit 2 with the reason when Redis would evict jobs (a Redis that is down is fine)."""
    import redis

    from services.common.redis_memory import read_memory

    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
    )
    try:
        read_memory(client, check=settings.redis_policy_check)
    finally:
        client.close()


def _fresh_multiproc_dir(workers: int) -> Path | None:
    """Give the API's processes one folder to share metrics in, empty of a past run's files."""
    import atexit
    import os
    import shutil
    import tempfile

    # prometheus-client's own variable, read by each uvicorn process it spawns.
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if workers == 1 and not given:
        return None  # one process: its own registry, no files
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        # Counters left by a previous run would be added to this run's.
        for stale in folder.glob("*.db"):
            stale.unlink()
    else:
        folder = Path(tempfile.mkdtemp(prefix="visionq-metrics-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker in this process."""
    from services.common.settings import get_worker_settings

    settings = get_worker_settings()
    from services.gpu_worker.main import run_worker

    device: str = args.device or settings.device
    index: int = args.index if args.index is not None else settings.worker_index
    return run_worker(device, args.models, index)


def cmd_workers(args: argparse.Namespace) -> int:
    """Run one pinned worker per GPU."""
    from services.cli.up import run_workers

    return run_workers(args.gpus)


def cmd_compose(args: argparse.Namespace) -> int:
    """Write docker-compose.gpu.yml (and the Prometheus worker targets) for N GPUs."""
    from services.cli.compose import WORKER_TARGETS, write_compose

    targets = None if args.no_targets else WORKER_TARGETS
    for path in write_compose(args.gpus, args.out, targets):
        print(f"wrote {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the models."""
    from services.cli.models_cmd import print_models
    from services.common.settings import get_api_settings

    return print_models(get_api_settings(), sys.stdout)


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def cmd_predict(args: argparse.Namespace) -> int:
    """Send images to the API."""
    from services.cli.predict import PredictOptions, run_command

    opts = PredictOptions(
        url=args.url,
        model=args.model,
        top_k=args.top_k,
        timeout_s=args.timeout,
        concurrency=args.concurrency,
        api_key=args.api_key,
        retries=args.retries,
        retry_failed=args.retry_failed,
        params=dict(args.param or []),
    )
    return run_command(args.paths, opts, args.out, args.resume, sys.stdout, args.argv)


def cmd_bench(args: argparse.Namespace) -> int:
    """The benchmark harness: raw limit, served and unbatched stacks."""
    from services.bench.run import run

    return run(args)


def cmd_chaos(args: argparse.Namespace) -> int:
    """Faults on a local cluster under load; exit 1 if anything was lost or doubled."""
    import tempfile

    from services.chaos.run import run_chaos, summary, write_report

    workdir = Path(tempfile.mkdtemp(prefix="visionq-chaos-"))
    report = run_chaos(args.minutes, args.seed, args.period, workdir)
    print(summary(report))
    if args.out is not None:
        write_report(report, args.out)
        print(f"wrote {args.out}")
    print(f"process logs in {workdir}")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="visionq",
        description="GPU image-inference service. Settings come from VISIONQ_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "Redis (embedded unless VISIONQ_REDIS_URL is set), API and workers")
    p.add_argument("--host", default="127.0.0.1", help="API bind address (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=argtypes.port,
        default=8000,
        help="API port (default 8000; 0 picks a free one; make up ARGS='--port N')",
    )
    p.add_argument(
        "--redis-port", type=argtypes.port, default=0, help="embedded Redis port; 0 = free"
    )
    p.add_argument(
        "--redis-dir",
        type=Path,
        default=None,
        help="keep the embedded Redis data here (default: a temporary folder)",
    )
    p.add_argument(
        "--workers",
        type=argtypes.positive_int,
        default=None,
        help="CPU workers when no GPU is visible (default 1); else the first N GPUs",
    )
    p.add_argument(
        "--api-workers",
        type=argtypes.positive_int,
        default=1,
        help="API processes (visionq api --workers N; default 1)",
    )
    p.add_argument(
        "--ready-timeout",
        type=argtypes.seconds,
        default=None,
        metavar="SECONDS",
        help="how long to wait for a worker to serve (default 120; 900 with VISIONQ_COMPILE=1)",
    )

    p = add("api", cmd_api, "the API server only")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=argtypes.port, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--workers",
        type=argtypes.positive_int,
        default=1,
        help="uvicorn processes (they share metrics files)",
    )

    p = add("worker", cmd_worker, "one worker pinned to one device")
    p.add_argument(
        "--device",
        type=_device,
        default=None,
        help="cpu, cuda:N, cuda or auto (default VISIONQ_DEVICE)",
    )
    p.add_argument(
        "--models", type=_models, default=None, help="comma list of models (default VISIONQ_MODELS)"
    )
    p.add_argument("--index", type=int, default=None, help="worker index (metrics port offset)")

    p = add("workers", cmd_workers, "one worker process per GPU")
    p.add_argument("--gpus", default="all", help="all, or a comma list of GPU ids such as 0,2")

    p = add("compose", cmd_compose, "write docker-compose.gpu.yml for N GPUs")
    p.add_argument("--gpus", type=argtypes.positive_int, required=True, help="GPUs on the host")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("docker-compose.gpu.yml"),
        help="where to write the compose file (default docker-compose.gpu.yml)",
    )
    p.add_argument(
        "--no-targets",
        action="store_true",
        help="do not rewrite deploy/prometheus/targets/workers.yml",
    )

    p = add(
        "predict", cmd_predict, "run a model on files, folders (recursive) or globs via the API"
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument(
        "--top-k",
        type=argtypes.positive_int,
        default=None,
        help="labels per image, classifiers (default: the server's, 5)",
    )
    p.add_argument(
        "--param",
        action="append",
        type=_param,
        metavar="NAME=VALUE",
        help="a model parameter (GET /v1/models lists them), e.g. score_threshold=0.3",
    )
    p.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="the API's address (default http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="results.jsonl or .csv, one row per file, written as results arrive "
        "(default: JSON lines on stdout)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a run: skip files done in --out (a result, or a failure of the file "
        "itself); send the rest, including transient failures (timeouts, 429/503)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: send files that failed permanently again too",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds the server may wait for each result (default: its own, 30)",
    )
    p.add_argument(
        "--concurrency",
        type=argtypes.positive_int,
        default=4,
        help="requests in flight at once (default 4)",
    )
    p.add_argument(
        "--retries",
        type=argtypes.non_negative_int,
        default=3,
        help="retries per file on 429/503 and refused connections (default 3)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="sent as Authorization: Bearer <key> (when VISIONQ_API_KEYS is set)",
    )

    add("models", cmd_models, "registered models and where their weights come from")
    p = add("chaos", cmd_chaos, "kill, stop and restart parts of a local cluster under load")
    p.add_argument("--minutes", type=float, default=5.0, help="how long faults are injected")
    p.add_argument("--seed", type=int, default=1, help="the fault sequence's random seed")
    p.add_argument("--period", type=float, default=8.0, help="mean seconds between faults")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p = add("bench", cmd_bench, "raw limit vs served vs unbatched: table, JSON, chart")
    from services.bench.options import add_arguments

    add_arguments(p)
    return parser


def _configure_logging() -> None:
    from services.common import logs

    try:
        from services.common.settings import get_api_settings
    except ImportError:
        # A client-only install (no pydantic-settings): predict logs plain text.
        logs.configure("INFO", "text")
        return
    try:
        settings = get_api_settings()
    except ConfigError:
        # The command that needs the settings reports what is wrong.
        logs.configure("INFO", "text")
        return
    logs.configure(settings.log_level, settings.log_format)


# The extra that brings each command's packages (see pyproject.toml); the rest need both.
_EXTRA_FOR = {"up": "local", "api": "api", "worker": "worker", "workers": "worker",
              "compose": "api", "models": "api", "bench": "bench"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line as given, for commands that print how to run themselves again.
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"visionq {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.split(".")[0] in ("services", "models"):
            raise
        # A client-only install (`pip install visionq`) lacks the server roles' packages.
        extra = _EXTRA_FOR.get(args.command, "api,worker")
        print(
            f"visionq {args.command}: needs {exc.name!r}, which this install lacks; "
            f"pip install 'visionq[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
