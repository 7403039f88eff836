"""CPU used per image by each process of the stack, read from the OS over a load window.

``visionq up`` starts Redis, the API (one process, or uvicorn's supervisor and its
``--workers`` children) and the workers; each process's role comes from its command line,
and a process the command line does not name (a uvicorn child, a multiprocessing helper)
takes its parent's role. Over the window the meter reads, from the OS:

- each stack process's CPU time (psutil: user + system, every thread);
- the load client's own CPU time (``getrusage`` of this process: the client runs here);
- the whole machine's busy time (``psutil.cpu_times()``: every process, other sessions
  included, so a busy neighbour shows as machine cores the stack and client don't explain).

A process that ends inside the window loses the CPU it used there (the OS forgets it);
one that starts inside it counts from zero.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

#: Roles in the order tables show them; "other" is anything under ``visionq up`` not named.
ROLES = ("api", "worker", "redis", "supervisor", "other")
_SUBCOMMANDS = {"api": "api", "worker": "worker", "up": "supervisor", "workers": "supervisor"}


def classify(cmdline: Sequence[str], name: str) -> tuple[str, str] | None:
    """(role, label) of a stack process from its command line; None when it names none.

    ``python -m services.cli.main worker --device cpu --index 1`` -> ("worker", "worker-1");
    ``.../visionq api ...`` -> ("api", "api"); ``redis-server 127.0.0.1:6400`` -> ("redis",
    "redis"); ``visionq up`` -> ("supervisor", "supervisor").
    """
    first = cmdline[0] if cmdline else ""
    if name.startswith("redis-server") or first.split("/")[-1].startswith("redis-server"):
        return "redis", "redis"
    args = list(cmdline)
    for i, arg in enumerate(args):
        if arg == "services.cli.main" or arg.split("/")[-1] == "visionq":
            sub = args[i + 1] if i + 1 < len(args) else ""
            role = _SUBCOMMANDS.get(sub)
            if role is None:
                return None
            if role == "worker":
                index = args[args.index("--index") + 1] if "--index" in args[:-1] else "0"
                return role, f"worker-{index}"
            return role, role
    return None


@dataclass(frozen=True)
class ProcSample:
    """One process's cumulative CPU seconds at a moment, with its role and label."""

    pid: int
    create_time: float
    role: str
    label: str
    cpu_s: float


def _cpu_s(proc: psutil.Process) -> tuple[float, float, list[str], str]:
    with proc.oneshot():
        times = proc.cpu_times()
        return times.user + times.system, proc.create_time(), proc.cmdline(), proc.name()


def sample_tree(root_pid: int) -> list[ProcSample]:
    """Every live process under (and including) ``root_pid``, classified; [] if it is gone.

    An unnamed child is labelled ``<parent label>/<n>`` (n counts its unnamed siblings by
    pid, from 1), or ``<parent label>/tracker`` for multiprocessing's resource tracker.
    """
    out: list[ProcSample] = []
    try:
        todo = [(psutil.Process(root_pid), ("other", ""))]  # "": the root has no parent
    except psutil.Error:
        return out
    unnamed: dict[str, int] = {}  # per parent label: unnamed children seen so far
    while todo:
        proc, (parent_role, parent_label) = todo.pop(0)
        try:
            cpu_s, created, cmdline, name = _cpu_s(proc)
            children = sorted(proc.children(), key=lambda p: p.pid)
        except psutil.Error:
            continue  # ended meanwhile
        named = classify(cmdline, name)
        if named is None and not parent_label:
            named = ("other", "other")
        elif named is None:
            # A uvicorn child or a multiprocessing helper: its parent's role, its own label.
            if any("resource_tracker" in a for a in cmdline):
                kind = "tracker"
            else:
                unnamed[parent_label] = unnamed.get(parent_label, 0) + 1
                kind = str(unnamed[parent_label])
            named = (parent_role, f"{parent_label}/{kind}")
        out.append(ProcSample(proc.pid, created, *named, cpu_s))
        todo.extend((child, named) for child in children)
    return out


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    # Busy: running code. Not idle, iowait or steal (no code of this machine's ran), and
    # not guest, which Linux already counts inside user.
    fields = ("user", "nice", "system", "irq", "softirq")
    return float(sum(getattr(times, f, 0.0) for f in fields))


class StackMeter:
    """Brackets a load window: ``start()`` before it, ``stop(images)`` after it."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._before: dict[tuple[int, float], ProcSample] = {}
        self._client0 = self._machine0 = self._t0 = 0.0

    def start(self) -> None:
        """Read every counter now."""
        self._before = {(s.pid, s.create_time): s for s in sample_tree(self.root_pid)}
        self._machine0 = _machine_busy_s()
        self._client0 = _client_cpu_s()
        self._t0 = time.monotonic()

    def stop(self, images: int) -> dict[str, Any]:
        """CPU used since ``start()``: per process, per role, stack, client and machine."""
        wall = time.monotonic() - self._t0
        client = _client_cpu_s() - self._client0
        machine = _machine_busy_s() - self._machine0
        used: list[tuple[ProcSample, float]] = []
        for s in sample_tree(self.root_pid):
            before = self._before.get((s.pid, s.create_time))
            used.append((s, s.cpu_s - (before.cpu_s if before else 0.0)))
        return summarize(used, client, machine, wall, images, psutil.cpu_count() or 1)


def _figures(cpu_s: float, wall: float, images: int) -> dict[str, float]:
    return {
        "cpu_s": round(cpu_s, 4),
        "cores": cpu_s / wall if wall > 0 else 0.0,
        "ms_per_image": 1000 * cpu_s / images if images else 0.0,
    }


def summarize(
    used: list[tuple[ProcSample, float]],
    client_s: float,
    machine_s: float,
    wall: float,
    images: int,
    cpus: int,
) -> dict[str, Any]:
    """The JSON of one window: CPU seconds -> cores busy and CPU-ms per image.

    ``used`` pairs each stack process with the CPU seconds it used in the window; the
    stack is their sum (the load client is apart: ``client``); ``machine`` is every core's
    busy time, whoever used it.
    """
    by_role = {role: 0.0 for role in ROLES}
    for sample, cpu_s in used:
        by_role[sample.role] = by_role.get(sample.role, 0.0) + cpu_s
    stack = sum(by_role.values())
    return {
        "window_s": round(wall, 3),
        "images": images,
        "machine_cpus": cpus,
        "processes": [
            {"pid": s.pid, "role": s.role, "label": s.label, **_figures(cpu_s, wall, images)}
            for s, cpu_s in used
        ],
        "roles": {role: _figures(cpu_s, wall, images) for role, cpu_s in by_role.items()},
        "stack": _figures(stack, wall, images),
        "client": _figures(client_s, wall, images),
        "machine": _figures(machine_s, wall, images),
    }
