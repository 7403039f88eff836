"""The chaos run's cluster: one Redis with AOF, N API processes and M CPU workers.

Every process is a real ``visionq`` command started here and ended here by PID. A
supervisor thread restarts a worker or API process that exited, as Kubernetes would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.redis_server import RedisServer, free_port

logger = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0  # a supervisor's back-off before it starts a replacement


@dataclass
class Member:
    """One API or worker slot and the process now in it."""

    kind: str  # "api" | "worker"
    index: int
    port: int = 0  # API only
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    paused: bool = False  # SIGSTOPped on purpose: alive, not to be restarted

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Cluster:
    """Starts, watches and ends the processes of one chaos run."""

    def __init__(self, workdir: Path, env: dict[str, str], apis: int, workers: int) -> None:
        """``env`` is the whole environment of the processes (Redis's URL is added)."""
        self.workdir = workdir
        self.redis = RedisServer(port=0, appendonly=True, dir=workdir / "redis")
        self._env = env
        self.members = [Member("api", i) for i in range(apis)]
        self.members += [Member("worker", i) for i in range(workers)]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)

    @property
    def apis(self) -> list[Member]:
        return [m for m in self.members if m.kind == "api"]

    @property
    def workers(self) -> list[Member]:
        return [m for m in self.members if m.kind == "worker"]

    def urls(self) -> list[str]:
        """Base URLs of the API slots."""
        return [f"http://127.0.0.1:{m.port}" for m in self.apis]

    def start(self, timeout_s: float = 600.0) -> None:
        """Start Redis and every process; return once all APIs answer and workers beat."""
        self.redis.start()
        for member in self.members:
            self._spawn(member)
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            for member in self.members:
                if not member.alive():
                    raise RuntimeError(f"{member.kind} {member.index} exited:\n{self.tail(member)}")
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready in time")
            time.sleep(0.5)
        self._supervisor.start()

    def ready(self) -> bool:
        """Every API answers /healthz and every worker slot is counted live."""
        try:
            for url in self.urls():
                httpx.get(f"{url}/healthz", timeout=5).raise_for_status()
        except httpx.HTTPError:
            return False
        return self.live_workers() >= len(self.workers)

    def live_workers(self) -> int:
        """Workers the API counts live (any API that answers; 0 when none does)."""
        for url in self.urls():
            try:
                body = httpx.get(f"{url}/v1/models", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                continue
            return max((int(m.get("live_workers", 0)) for m in body.get("models", [])), default=0)
        return 0

    def _spawn(self, member: Member) -> None:
        env = {**self._env, "VISIONQ_REDIS_URL": self.redis.url}
        if member.kind == "api":
            member.port = member.port or free_port()
            args = ["api", "--host", "127.0.0.1", "--port", str(member.port)]
        else:
            args = ["worker", "--device", "cpu", "--index", str(member.index)]
        log = self.workdir / f"{member.kind}{member.index}.log"
        with log.open("ab") as out:
            member.popen = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        member.starts += 1

    def _supervise(self) -> None:
        while not self._stop.wait(0.25):
            with self._lock:
                for member in self.members:
                    if member.popen is None or member.paused or member.alive():
                        continue
                    member.exits.append(int(member.popen.returncode))
                    time.sleep(RESTART_DELAY_S)
                    if not self._stop.is_set():
                        self._spawn(member)

    def signal(self, member: Member, sig: int) -> None:
        """Send ``sig`` to the member's current process (if it is still there)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(member.pid, sig)

    def tail(self, member: Member, chars: int = 3000) -> str:
        path = self.workdir / f"{member.kind}{member.index}.log"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """End every process this run started (by PID), then Redis."""
        self._stop.set()
        if self._supervisor.is_alive():
            self._supervisor.join(5)
        for member in self.members:
            if member.popen is None or member.popen.poll() is not None:
                continue
            if member.paused:
                self.signal(member, signal.SIGCONT)
            member.popen.terminate()
        for member in self.members:
            if member.popen is None:
                continue
            try:
                member.popen.wait(90)
            except subprocess.TimeoutExpired:
                member.popen.kill()
                member.popen.wait()
        self.redis.stop()
