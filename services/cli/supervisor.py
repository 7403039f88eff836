"""Start child processes, restart the ones that die, stop them all on a signal.

Each child runs in its own session (so a Ctrl-C reaches only us, and we stop the workers
in order) and gets SIGTERM if we die, even by SIGKILL, so nothing is left orphaned.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from services.common.redis_server import die_with_parent_preexec

logger = logging.getLogger(__name__)


@dataclass
class ChildSpec:
    """What to run: a name for the logs, the argv, extra environment, whether to restart."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    restart: bool = True
    # Children stop in stages, lowest first, each stage waited for before the next: the API
    # (stage 0) finishes the requests it is serving while the workers (stage 1) still run.
    stop_stage: int = 1


@dataclass
class Exit:
    """A child that ended: its name, pid, return code and the restart delay picked (or None)."""

    name: str
    pid: int
    returncode: int
    uptime_s: float
    restart_delay_s: float | None


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    next_delay_s: float = 0.0
    restart_at: float | None = None


def describe_returncode(returncode: int) -> str:
    """'exit code 3' or 'signal SIGKILL' for a Popen return code."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def worker_spec(index: int, gpu: str | None) -> ChildSpec:
    """The command of worker ``index``: pinned to ``gpu``, or a CPU worker when None."""
    if gpu is None:
        device, visible = "cpu", ""
    else:
        # Inside the child only the pinned GPU exists; UUIDs cannot be written as cuda:N.
        device, visible = (f"cuda:{gpu}" if gpu.isdigit() else "cuda:0"), gpu
    argv = [sys.executable, "-m", "services.cli.main", "worker", "--device", device]
    argv += ["--index", str(index)]
    env = {
        "CUDA_VISIBLE_DEVICES": visible,
        "VISIONQ_WORKER_INDEX": str(index),
        "VISIONQ_DEVICE": device,
    }
    if gpu is not None:
        # The GPU ids come from nvidia-smi / /proc, numbered in PCI order; CUDA numbers
        # fastest-first unless told otherwise, so index N could be another GPU in the child.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    label = f"worker-{index} ({device}" + (f", GPU {gpu})" if gpu is not None else ")")
    return ChildSpec(name=label, argv=argv, env=env)


class Supervisor:
    """Runs a set of children; restarts dead ones with exponential back-off."""

    def __init__(
        self,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        stop_timeout_s: float = 20.0,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.stop_timeout_s = stop_timeout_s
        self.poll_interval_s = poll_interval_s
        self.exits: list[Exit] = []
        self._children: list[_Child] = []
        self._stop = threading.Event()
        self._signals = 0

    # -- children -------------------------------------------------------------------------------

    def add(self, spec: ChildSpec) -> int:
        """Start a child now; returns its pid."""
        child = _Child(spec=spec, next_delay_s=self.backoff_initial_s)
        self._children.append(child)
        return self._spawn(child)

    def pids(self) -> dict[str, int]:
        """Name -> pid of every child alive right now."""
        return {
            c.spec.name: c.proc.pid
            for c in self._children
            if c.proc is not None and c.proc.poll() is None
        }

    def _spawn(self, child: _Child) -> int:
        env = dict(os.environ)
        env.update(child.spec.env)
        child.proc = subprocess.Popen(
            list(child.spec.argv),
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent_preexec(),
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        logger.info("started %s (pid %d)", child.spec.name, child.proc.pid)
        return child.proc.pid

    def check(self, restart: bool = True) -> list[Exit]:
        """Reap children that ended and (re)start the ones whose back-off ran out."""
        now = time.monotonic()
        ended: list[Exit] = []
        for child in self._children:
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                ended.append(self._on_exit(child, proc, now, restart))
            if child.restart_at is not None and now >= child.restart_at and restart:
                self._spawn(child)
        return ended

    def _on_exit(
        self, child: _Child, proc: subprocess.Popen[bytes], now: float, restart: bool
    ) -> Exit:
        uptime = now - child.started_at
        child.proc = None
        self._kill_group(proc.pid, signal.SIGKILL)  # whatever it left behind in its group
        delay: float | None = None
        if restart and child.spec.restart and not self._stop.is_set():
            if uptime >= self.stable_after_s:
                child.next_delay_s = self.backoff_initial_s
            delay = child.next_delay_s
            child.next_delay_s = min(child.next_delay_s * 2, self.backoff_max_s)
            child.restart_at = now + delay
        why = describe_returncode(proc.returncode)
        after = f"restarting in {delay:g} s" if delay is not None else "not restarting"
        logger.warning(
            "%s (pid %d) ended with %s after %.1f s; %s",
            child.spec.name, proc.pid, why, uptime, after,
        )  # fmt: skip
        info = Exit(child.spec.name, proc.pid, proc.returncode, uptime, delay)
        self.exits.append(info)
        return info

    # -- running and stopping -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM ask run() to stop; a second signal kills the children at once."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            logger.warning("second %s: killing every child now", signal.Signals(signum).name)
            self.stop_timeout_s = 0.0
        self._stop.set()

    def request_stop(self) -> None:
        """Make run() return (thread-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when a stop was asked for meanwhile."""
        return self._stop.wait(seconds)

    def run(self, on_tick: Callable[[], None] | None = None) -> int:
        """Supervise until a stop is asked for, then stop every child; returns 0."""
        try:
            while not self._stop.is_set():
                self.check()
                if on_tick is not None:
                    on_tick()
                self._stop.wait(self.poll_interval_s)
        finally:
            self.stop()
        return 0

    def stop(self) -> None:
        """Stop every child, stage by stage: SIGTERM, wait up to stop_timeout_s, SIGKILL."""
        self._stop.set()
        for child in self._children:
            child.restart_at = None
        for stage in sorted({c.spec.stop_stage for c in self._children}):
            self._stop_all([c for c in self._children if c.spec.stop_stage == stage])

    def _stop_all(self, children: list[_Child]) -> None:
        live = [c.proc for c in children if c.proc is not None]
        for proc in live:
            self._kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for proc in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                logger.warning("pid %d did not stop in %g s; killing it", proc.pid,
                               self.stop_timeout_s)  # fmt: skip
                self._kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            else:
                self._kill_group(proc.pid, signal.SIGKILL)  # leftovers in its group
        for child in children:
            child.proc = None

    @staticmethod
    def _kill_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
