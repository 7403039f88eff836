"""`visionq up`: the whole stack from one command, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from services.common.redis_server import free_port
from tests.images import jpeg
from tests.integration.helpers import up_env
from tests.integration.stack import ROOT

pytestmark = pytest.mark.integration


def test_up_serves_and_ctrl_c_stops_everything(models_file: Path, tmp_path: Path) -> None:
    """With ``--port 0`` (a free port, as ``--redis-port 0``): `up` picks it, says which, and
    serves there; it used to probe port 0 until its ready timeout."""
    env = up_env(models_file)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "up",
                "--port",
                "0",
                "--redis-port",
                "0",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while "visionq is up" not in log.read_text(errors="replace"):
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        found = re.search(r"visionq is up: API at http://127\.0\.0\.1:(\d+) ", log.read_text())
        assert found, log.read_text()
        port = int(found.group(1))
        assert port != 0
        children = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "redis-server" in names and " api " in f" {names} " and "worker" in names
        resp = httpx.post(
            f"http://127.0.0.1:{port}/v1/predict",
            files=[("file", ("a.jpg", jpeg(1), "image/jpeg"))],
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, log.read_text()
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.pid for p in alive]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


@pytest.mark.parametrize("compiled", [False, True])
def test_a_worker_not_ready_in_time_is_reported_with_what_to_do(
    models_file: Path, tmp_path: Path, compiled: bool
) -> None:
    """Past --ready-timeout, `up` says so, names the option (and, compiled, why a first
    start is slow: every bucket compiles), stops everything it started and exits 1."""
    mark = uuid.uuid4().hex
    env = up_env(models_file, VISIONQ_COMPILE="1" if compiled else "0", VISIONQ_TEST_MARK=mark)
    argv = [sys.executable, "-m", "services.cli.main", "up", "--port", str(free_port())]
    up = subprocess.Popen(
        [*argv, "--ready-timeout", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 1, out
    assert "not ready after 1 s" in out and "--ready-timeout SECONDS waits longer" in out, out
    assert ("compiles every batch bucket" in out) == compiled, out
    # Every child inherited the mark: none may outlive `up`.
    leftovers = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("VISIONQ_TEST_MARK") == mark:
                leftovers.append(" ".join(proc.cmdline()))
    assert not leftovers, leftovers


@pytest.mark.parametrize("value", ["0", "-5", "abc", "inf", "nan"])
def test_ready_timeout_must_be_a_positive_finite_number(value: str) -> None:
    argv = [sys.executable, "-m", "services.cli.main", "up", f"--ready-timeout={value}"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"'{value}' is not a positive, finite number of seconds" in done.stderr, done.stderr


@pytest.mark.parametrize("host", ["10.9.9.9", "nonexistent.invalid"])
def test_port_0_on_a_host_that_cannot_be_bound_is_one_line(host: str) -> None:
    """`--port 0` asks the OS for a port on --host: an address that is not this machine's,
    or a name that does not resolve, gets the same one line and exit 2 as a taken port."""
    argv = [sys.executable, "-m", "services.cli.main", "up", "--host", host, "--port", "0"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"--host {host!r} cannot be bound" in done.stderr
    assert "Traceback" not in done.stderr
