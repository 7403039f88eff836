"""A seeded chaos run: faults on a live cluster under load, then the books are checked.

The loop SIGKILLs and SIGTERMs random workers, SIGKILLs an API process (its supervisor
restarts it), SIGSTOPs a worker for longer than the heartbeat's TTL, and restarts Redis
once (kill -9, AOF). Afterwards: every accepted job must be terminal, every succeeded job
stored exactly once, no 5xx but a 503 while Redis was down, and no key left behind.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from services.bench.images import generated_jpegs
from services.chaos.cluster import Cluster, Member
from services.chaos.keys import TERMINAL_NAMES, leftover_keys, worker_holdings
from services.chaos.load import Load, Seen
from services.client import Client

logger = logging.getLogger(__name__)

WORKER_FAULTS = ("worker_kill", "worker_term", "worker_stop")
FAULTS = (*WORKER_FAULTS, "api_kill")
PAUSE_S = 10.0  # a SIGSTOP longer than the heartbeat TTL (3 x the default 2 s interval)
GRACE_S = 75.0  # the manifests' terminationGracePeriodSeconds at default settings
REDIS_DOWN_S = 2.0
RECOVERY_LIMIT_S = 120.0


@dataclass
class Fault:
    """One injected fault and how long the cluster took to get over it."""

    at_s: float
    kind: str
    target: str
    jobs_held: int = 0
    recovered_s: float | None = None  # the jobs it held ended / the service answers again
    restored_s: float | None = None  # all workers (or APIs) live again, restarts included


@dataclass
class Report:
    """The run's figures and verdicts."""

    seed: int
    minutes: float
    faults: list[Fault] = field(default_factory=list)
    accepted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    bad_5xx: list[str] = field(default_factory=list)
    leftovers: dict[str, int] = field(default_factory=dict)
    timed_out: list[dict[str, str]] = field(default_factory=list)  # records of 504'd jobs
    requests: int = 0
    transport_errors: int = 0
    predict_failures: list[str] = field(default_factory=list)
    redis_down: list[tuple[float, float]] = field(default_factory=list)
    phases_s: dict[str, float] = field(default_factory=dict)  # start, faults, drain

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.bad_5xx or any(self.leftovers.values()))

    def worst(self, kinds: tuple[str, ...] = FAULTS, attr: str = "recovered_s") -> float | None:
        """The longest recovery among faults of ``kinds`` (None if none recovered)."""
        times = [getattr(f, attr) for f in self.faults if f.kind in kinds]
        known = [t for t in times if t is not None]
        return max(known) if known else None

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["ok"] = self.ok
        kinds = (*FAULTS, "redis_restart")
        body["worst_recovery_s"] = {k: self.worst((k,)) for k in kinds}
        body["worst_restored_s"] = {k: self.worst((k,), "restored_s") for k in kinds}
        return body


class ChaosRun:
    """Owns the cluster, the load and the fault loop of one run."""

    def __init__(self, cluster: Cluster, model: str, seed: int, period_s: float) -> None:
        self.cluster = cluster
        self.model = model
        self.rng = random.Random(seed)
        self.period_s = period_s
        self._client: redis.Redis | None = None  # once Redis has its port
        self.t0 = time.monotonic()
        self.report = Report(seed=seed, minutes=0.0)
        self.load: Load | None = None
        self._watchers: list[threading.Thread] = []

    @property
    def client(self) -> redis.Redis:
        """A client of the run's Redis (after the cluster started)."""
        assert self._client is not None, "the cluster has not started"
        return self._client

    def run(self, minutes: float) -> Report:
        """Start everything, inject faults for ``minutes``, drain, and check."""
        self.report.minutes = minutes
        began = time.monotonic()
        self.cluster.start()
        self.report.phases_s["start"] = round(time.monotonic() - began, 1)
        self._client = redis.Redis.from_url(self.cluster.redis.url, socket_timeout=5)
        images = generated_jpegs(16, (160, 120))
        self.load = Load(self.cluster.urls(), self.model, images, pace_s=1.0, per_request=2)
        self.load.start()
        self.t0 = time.monotonic()
        end = self.t0 + minutes * 60
        plan = list(FAULTS)
        self.rng.shuffle(plan)  # every kind at least once, in a seeded order
        redis_at = self.t0 + minutes * 60 / 2
        # Past ``minutes`` only to finish the plan: a short run still injects every kind.
        while time.monotonic() < end or plan:
            time.sleep(self.rng.uniform(0.5, 1.5) * self.period_s)
            if redis_at and time.monotonic() >= redis_at:
                redis_at = 0
                self._restart_redis()
                continue
            self._inject(plan.pop(0) if plan else self.rng.choice(FAULTS))
        if redis_at:
            self._restart_redis()
        self.load.stop()
        self.report.phases_s["faults"] = round(time.monotonic() - self.t0, 1)
        began = time.monotonic()
        for watcher in self._watchers:
            watcher.join(RECOVERY_LIMIT_S)
        self._settle(self.load.seen)
        self.report.phases_s["drain"] = round(time.monotonic() - began, 1)
        return self.report

    # -- faults ------------------------------------------------------------------------

    def _inject(self, kind: str) -> None:
        if kind == "api_kill":
            member = self.rng.choice([m for m in self.cluster.apis if m.alive()])
            fault = self._fault(kind, member)
            self.cluster.signal(member, signal.SIGKILL)
            self._watch(fault, lambda: self._api_up(member))
            self._watch(fault, lambda: self._api_up(member), "restored_s")
            return
        # Take a worker down only while another one serves: the run tests failover, not a
        # cluster with no worker at all (restarts take tens of seconds on a small machine).
        deadline = time.monotonic() + RECOVERY_LIMIT_S
        while self.cluster.live_workers() < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        candidates = [m for m in self.cluster.workers if m.alive() and not m.paused]
        if self.cluster.live_workers() < 2 or not candidates:
            logger.info("chaos: %s skipped, fewer than two workers live", kind)
            return
        # Prefer a worker that holds jobs right now: that is what failover has to save.
        busy = [m for m in candidates if worker_holdings(self.client, m.pid)]
        member = self.rng.choice(busy or candidates)
        fault = self._fault(kind, member)
        held = worker_holdings(self.client, member.pid)
        fault.jobs_held = len(held)
        if kind == "worker_kill":
            self.cluster.signal(member, signal.SIGKILL)
        elif kind == "worker_term":
            self.cluster.signal(member, signal.SIGTERM)
            threading.Timer(GRACE_S, _kill_if_alive, args=(member.popen,)).start()
        else:
            member.paused = True
            self.cluster.signal(member, signal.SIGSTOP)
            threading.Timer(PAUSE_S, self._resume, args=(member,)).start()
        self._watch(fault, lambda: self._ended(held))
        self._watch(fault, self.cluster.ready, "restored_s")

    def _resume(self, member: Member) -> None:
        self.cluster.signal(member, signal.SIGCONT)
        member.paused = False

    def _restart_redis(self) -> None:
        fault = Fault(round(time.monotonic() - self.t0, 1), "redis_restart", "redis")
        self.report.faults.append(fault)
        down = time.time()
        self.cluster.redis.kill()
        time.sleep(REDIS_DOWN_S)
        self.cluster.redis.restart()
        back = time.time()
        self.report.redis_down.append((down, back))
        self._watch(fault, lambda: self._predict_ok(back))
        self._watch(fault, self.cluster.ready, "restored_s")

    def _fault(self, kind: str, member: Member) -> Fault:
        fault = Fault(round(time.monotonic() - self.t0, 1), kind, f"{member.kind}{member.index}")
        self.report.faults.append(fault)
        logger.info("chaos: %s %s (pid %d)", kind, fault.target, member.pid)
        return fault

    def _watch(self, fault: Fault, done: Any, attr: str = "recovered_s") -> None:
        start = time.monotonic()

        def watch() -> None:
            while time.monotonic() - start < RECOVERY_LIMIT_S:
                try:
                    if done():
                        setattr(fault, attr, round(time.monotonic() - start, 2))
                        return
                except (redis.RedisError, OSError):
                    pass
                time.sleep(0.25)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        self._watchers.append(thread)

    def _ended(self, job_ids: list[str]) -> bool:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(f"vq:job:{job_id}", "status")
        return all(s is None or s.decode() in TERMINAL_NAMES for s in pipe.execute())

    def _api_up(self, member: Member) -> bool:
        try:
            with Client(f"http://127.0.0.1:{member.port}", timeout_s=5) as client:
                client.models()
            return True
        except Exception:
            return False

    def _predict_ok(self, since: float) -> bool:
        assert self.load is not None
        seen = self.load.seen
        with seen.lock:
            return any(t > since and s == 200 and p == "/v1/predict" for t, s, p in seen.statuses)

    # -- the books ---------------------------------------------------------------------

    def _settle(self, seen: Seen) -> None:
        report = self.report
        for batch_id in seen.batch_ids:
            try:
                with Client(self.cluster.urls()[0], timeout_s=60) as client:
                    seen.accept([job.job_id for job in client.batch_results(batch_id)])
            except Exception as exc:
                logger.warning("batch %s results: %s", batch_id, exc)
        deadline = time.monotonic() + RECOVERY_LIMIT_S + 60
        while True:
            statuses = self._statuses()
            open_jobs = [j for j, s in statuses.items() if s not in TERMINAL_NAMES]
            accepted_open = [j for j in seen.accepted if statuses.get(j) not in TERMINAL_NAMES]
            if not (open_jobs or accepted_open) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        report.accepted = len(seen.accepted)
        report.lost = sorted(accepted_open)
        counts: dict[str, int] = {}
        for job_id in seen.accepted:
            counts[statuses.get(job_id) or "missing"] = (
                counts.get(statuses.get(job_id) or "missing", 0) + 1
            )
        report.statuses = counts
        report.duplicates = self._duplicates()
        report.bad_5xx = self._bad_5xx(seen)
        # A worker killed by the last fault is handed back only once its heartbeat is gone:
        # give the reaper its ~10 s before calling anything left behind.
        settle_by = time.monotonic() + 60
        report.leftovers = leftover_keys(self.client)
        while any(report.leftovers.values()) and time.monotonic() < settle_by:
            time.sleep(1.0)
            report.leftovers = leftover_keys(self.client)
        report.timed_out = [self._record(j) for j in seen.timed_out[:20]]
        report.requests = seen.requests
        report.transport_errors = len(seen.transport_errors)
        report.predict_failures = [text for _, text in seen.predict_failures][:20]

    def _record(self, job_id: str) -> dict[str, str]:
        raw = self.client.hgetall(f"vq:job:{job_id}")
        keep = ("status", "created", "started", "finished", "deliveries", "worker", "lane")
        record = {_text(k): _text(v) for k, v in raw.items() if _text(k) in keep}
        return {"job_id": job_id, **record}

    def _statuses(self) -> dict[str, str]:
        keys = [k.decode() for k in self.client.scan_iter("vq:job:*", count=1000)]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "status")
        return {k[7:]: (s or b"").decode() for k, s in zip(keys, pipe.execute(), strict=True)}

    def _duplicates(self) -> list[str]:
        keys = [k.decode() for k in self.client.scan_iter("vq:job:*", count=1000)]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "status", "stores")
        out = []
        for key, (status, stores) in zip(keys, pipe.execute(), strict=True):
            if status == b"succeeded" and int(stores or 0) != 1:
                out.append(f"{key[7:]} stored {int(stores or 0)} times")
        return out

    def _bad_5xx(self, seen: Seen) -> list[str]:
        slack = 5.0  # clients still see the outage for a moment after the restart
        windows = [(a, b + slack) for a, b in self.report.redis_down]
        bad = []
        for when, status, path in seen.statuses:
            during = any(a <= when <= b for a, b in windows)
            if status >= 500 and not (status == 503 and during):
                bad.append(f"{status} {path} at +{when - windows[0][0] if windows else 0:.1f}s")
        return bad


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _kill_if_alive(popen: subprocess.Popen[bytes] | None) -> None:
    # What Kubernetes does at the end of the grace period.
    if popen is not None and popen.poll() is None:
        popen.kill()


def write_report(report: Report, path: Path) -> None:
    """The run's figures as JSON."""
    path.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")


def run_chaos(
    minutes: float,
    seed: int,
    period_s: float,
    workdir: Path,
    apis: int = 2,
    workers: int = 3,
    env: dict[str, str] | None = None,
    model: str | None = None,
) -> Report:
    """One chaos run on a fresh local cluster (Redis with AOF, ``apis`` + ``workers``).

    ``env`` is the processes' whole environment (default: this one's); ``model`` the one
    the load uses (default: VISIONQ_DEFAULT_MODEL).
    """
    import os

    from services.common.settings import get_api_settings

    model = model or get_api_settings().default_model
    extra = {"VISIONQ_METRICS_PORT": "0", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    full = {**(dict(os.environ) if env is None else env), **extra}
    cluster = Cluster(workdir, full, apis=apis, workers=workers)
    try:
        return ChaosRun(cluster, model, seed, period_s).run(minutes)
    finally:
        cluster.stop()


def summary(report: Report) -> str:
    """A few lines for the terminal."""
    kinds: dict[str, int] = {}
    for fault in report.faults:
        kinds[fault.kind] = kinds.get(fault.kind, 0) + 1
    worst = {k: v for k, v in report.to_json()["worst_recovery_s"].items() if v is not None}
    lines = [
        f"chaos seed {report.seed}, {report.minutes:g} min: {'OK' if report.ok else 'FAILED'}",
        f"faults: {', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}",
        f"worst recovery (s): {', '.join(f'{k} {v}' for k, v in worst.items())}",
        f"worst back to full strength (s): {report.to_json()['worst_restored_s']}",
        f"requests {report.requests}, accepted jobs {report.accepted}: {report.statuses}",
        f"lost {len(report.lost)}, duplicates {len(report.duplicates)}, "
        f"bad 5xx {len(report.bad_5xx)}, leftovers {report.leftovers}",
    ]
    return "\n".join(lines)
