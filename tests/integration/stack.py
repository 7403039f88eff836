"""Start real visionq processes (API, workers) against a real redis-server, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Stack:
    """API + workers sharing one env; every process started here is ended here by PID."""

    redis_url: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    api_port: int = 0
    worker_metrics_port: int = 0
    procs: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
        env.update(
            {
                "VISIONQ_REDIS_URL": self.redis_url,
                "VISIONQ_METRICS_PORT": "0",
                "VISIONQ_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                "CUDA_VISIBLE_DEVICES": "",
            }
        )
        env.update(self.env)
        return env

    def _spawn(self, name: str, args: list[str], extra: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        env = self.base_env()
        env.update(extra or {})
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_api(self) -> Proc:
        self.api_port = self.api_port or free_port()
        proc = self._spawn("api", ["api", "--host", "127.0.0.1", "--port", str(self.api_port)])
        self._wait(lambda: self._get("/healthz") == 200, proc, "API /healthz")
        return proc

    def start_worker(
        self, index: int = 0, extra: dict[str, str] | None = None, models: str = ""
    ) -> Proc:
        args = ["worker", "--device", "cpu", "--index", str(index)]
        if models:
            args += ["--models", models]
        return self._spawn("worker", args, extra)

    def start_with_worker(
        self, models: str = "", extra: dict[str, str] | None = None, timeout: float = 120.0
    ) -> Proc:
        """One worker and the API, both serving; the worker's Proc.

        The worker is spawned first: its start-up (torch, the model) is the long part, and
        it overlaps the API's instead of following it. Neither needs the other to start.
        """
        worker = self.start_worker(models=models, extra=extra)
        self.start_api()
        self.wait_ready(timeout=timeout)
        return worker

    def wait_ready(self, procs: Iterable[Proc] = (), timeout: float = 120.0) -> None:
        """Until /readyz is 200 and every worker watched says it consumes (Celery's "ready.").

        /readyz no longer waits for workers (jobs queue while workers scale from zero), so a
        test that needs a serving worker waits for the worker itself.
        """
        watched = list(procs) or self.procs
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = [p for p in watched if p.name == "worker"]
            if self._get("/readyz") == 200 and all(" ready." in p.log_tail(10**6) for p in workers):
                return
            for proc in watched:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            time.sleep(0.2)
        raise RuntimeError("stack not ready:\n" + "\n".join(p.log_tail() for p in watched))

    def _wait(self, ok: object, proc: Proc, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(ok) and ok():
                return
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited before {what}:\n{proc.log_tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}:\n{proc.log_tail()}")

    def _get(self, path: str) -> int:
        try:
            return httpx.get(self.url + path, timeout=5).status_code
        except httpx.HTTPError:
            return 0

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if proc.alive():
            proc.popen.send_signal(sig)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def stop_all(self) -> None:
        stop_procs(self.procs)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.procs)


def stop_procs(procs: Iterable[Proc], timeout: float = 30.0) -> None:
    """End every live process at once, then wait for each (SIGKILL past ``timeout``).

    Teardown only, where nothing is asserted any more: workers get SIGKILL, since their
    warm shutdown (hand-back, broker and pidbox clean-up) takes seconds and the tests that
    are about it send SIGTERM themselves; a worker is one process, so nothing is orphaned.
    The rest (an API may be a uvicorn supervisor with children) get SIGTERM, all at once
    rather than one after another.
    """
    live = [p for p in procs if p.alive()]
    for proc in live:
        proc.popen.send_signal(signal.SIGKILL if proc.name == "worker" else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in live:
        try:
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
