"""Ports: a taken port ends `visionq up`, `api` and `worker` at once with one clear line,
and `visionq up` never takes another server on its port for the API it started."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.supervisor import Supervisor
from services.cli.up import wait_ready
from services.common.redis_server import free_port
from tests.integration.helpers import up_env
from tests.integration.stack import ROOT

pytestmark = pytest.mark.integration


class _Foreign(http.server.BaseHTTPRequestHandler):
    """Something else on the port: answers 200 '{}' to everything, like a stranger's API."""

    def do_GET(self) -> None:
        body = b'{"status": "ready"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def foreign() -> Iterator[int]:
    """A foreign HTTP server on a free loopback port, held by this test process."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Foreign)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


@pytest.mark.parametrize("which", ["api", "redis", "worker_metrics"])
def test_up_with_a_taken_port_exits_at_once_naming_it(
    which: str, foreign: int, models_file: Path
) -> None:
    api, redis_port = free_port(), free_port()
    extra: dict[str, str] = {}
    option = {"api": "--port", "redis": "--redis-port", "worker_metrics": "VISIONQ_METRICS_PORT"}
    if which == "api":
        api = foreign
    elif which == "redis":
        redis_port = foreign
    else:
        extra["VISIONQ_METRICS_PORT"] = str(foreign)
    args = ["up", "--port", str(api), "--redis-port", str(redis_port)]
    code, out, took = _run(args, up_env(models_file, **extra))
    assert code != 0, out
    assert "visionq is up" not in out
    # Seconds, not the 120 s readiness wait: nothing was started.
    assert took < 30, (took, out)
    lines = [line for line in out.splitlines() if f"port {foreign} " in line]
    assert len(lines) == 1, out
    assert "already in use by pid " + str(os.getpid()) in lines[0]
    assert option[which] in lines[0]
    assert "Traceback" not in out


def test_api_with_its_port_taken_exits_2(foreign: int, models_file: Path) -> None:
    env = up_env(models_file, VISIONQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    code, out, _ = _run(["api", "--port", str(foreign)], env)
    assert code == 2, out
    assert f"port {foreign} (API, 127.0.0.1) is already in use" in out
    assert "--port" in out and "Traceback" not in out


def test_worker_with_its_metrics_port_taken_exits_2_before_loading(
    models_file: Path,
) -> None:
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        env = up_env(
            models_file,
            VISIONQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            VISIONQ_METRICS_PORT=str(port - 1),
        )
        code, out, _ = _run(["worker", "--device", "cpu", "--index", "1"], env)
    assert code == 2, out
    assert f"port {port} (worker 1 metrics" in out
    assert "VISIONQ_METRICS_PORT" in out and "Traceback" not in out
    assert "ready on" not in out  # it stopped before loading its model


def test_up_does_not_take_a_foreign_server_for_its_api(foreign: int) -> None:
    # The foreign server answers /readyz 200, as another visionq stack would.
    sup = Supervisor()
    start = time.monotonic()
    problem = wait_ready(sup, f"http://127.0.0.1:{foreign}", 60, run_token="ours")
    assert problem is not None and "another server" in problem
    assert time.monotonic() - start < 10
