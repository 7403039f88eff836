"""The bench's CPU split: process roles from command lines, per-window figures, the
targets and table built on them, and the phase plan (noop, --api-workers, --fast-decode)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from services.bench.cpu import ProcSample, StackMeter, classify, sample_tree, summarize
from services.bench.report import table, targets
from services.bench.run import plan_phases, resolve
from services.cli.main import build_parser

PY = "/venv/bin/python"


@pytest.mark.parametrize(
    ("cmdline", "name", "expected"),
    [
        ([PY, "-m", "services.cli.main", "up", "--port", "1"], "python",
         ("supervisor", "supervisor")),
        ([PY, "-m", "services.cli.main", "api", "--workers", "2"], "python", ("api", "api")),
        ([PY, "-m", "services.cli.main", "worker", "--device", "cpu", "--index", "3"], "python",
         ("worker", "worker-3")),
        ([PY, "-m", "services.cli.main", "worker"], "python", ("worker", "worker-0")),
        (["/usr/bin/redis-server 127.0.0.1:6400", "", ""], "redis-server", ("redis", "redis")),
        (["/x/.venv/bin/visionq", "api"], "visionq", ("api", "api")),
        ([PY, "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"], "python", None),
        ([PY, "-m", "services.cli.main", "predict", "x.jpg"], "python", None),
        ([], "zombie", None),
    ],
)  # fmt: skip
def test_classify_by_command_line(
    cmdline: list[str], name: str, expected: tuple[str, str] | None
) -> None:
    assert classify(cmdline, name) == expected


def test_summarize_splits_by_role() -> None:
    used = [
        (ProcSample(1, 0.0, "supervisor", "supervisor", 5.0), 0.01),
        (ProcSample(2, 0.0, "api", "api", 5.0), 0.0),
        (ProcSample(3, 0.0, "api", "api/1", 5.0), 0.4),
        (ProcSample(4, 0.0, "api", "api/2", 5.0), 0.2),
        (ProcSample(5, 0.0, "worker", "worker-0", 5.0), 1.0),
        (ProcSample(6, 0.0, "redis", "redis", 5.0), 0.19),
    ]
    out = summarize(used, client_s=0.1, machine_s=1.9, wall=1.0, images=200, cpus=2)
    assert out["roles"]["api"]["ms_per_image"] == pytest.approx(3.0)
    assert out["roles"]["worker"]["cores"] == pytest.approx(1.0)
    assert out["roles"]["other"]["cpu_s"] == 0
    assert out["stack"]["cores"] == pytest.approx(1.8)
    assert out["client"]["ms_per_image"] == pytest.approx(0.5)
    assert out["machine"]["cores"] == pytest.approx(1.9) and out["machine_cpus"] == 2
    assert [p["label"] for p in out["processes"]][1:4] == ["api", "api/1", "api/2"]


def test_sample_tree_and_meter_on_real_processes() -> None:
    # argv after -c is ignored by Python but is what the OS shows as the command line.
    burn = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"
    child = subprocess.Popen(
        [sys.executable, "-c", burn, "-m", "services.cli.main", "worker", "--index", "2"]
    )
    try:
        time.sleep(0.2)
        roles = {s.pid: (s.role, s.label) for s in sample_tree(os.getpid())}
        assert roles[os.getpid()] == ("other", "other")
        assert roles[child.pid] == ("worker", "worker-2")
        meter = StackMeter(os.getpid())
        meter.start()
        time.sleep(0.5)
        out = meter.stop(images=10)
        assert out["roles"]["worker"]["cpu_s"] > 0
        assert out["machine"]["cpu_s"] >= out["roles"]["worker"]["cpu_s"] - 0.05
    finally:
        child.kill()
        child.wait()
    assert sample_tree(child.pid) == []


def _cpu(api: float, worker: float, redis: float, stack_cores: float) -> dict[str, Any]:
    def fig(ms: float, cores: float = 0.0) -> dict[str, float]:
        return {"cpu_s": 0.0, "cores": cores, "ms_per_image": ms}

    roles = {"api": fig(api), "worker": fig(worker), "redis": fig(redis),
             "supervisor": fig(0.0), "other": fig(0.0)}  # fmt: skip
    procs = [{"pid": 1, "role": "api", "label": "api/1", **fig(api / 2)},
             {"pid": 2, "role": "api", "label": "api/2", **fig(api / 2)},
             {"pid": 3, "role": "worker", "label": "worker-0", **fig(worker)}]  # fmt: skip
    return {"window_s": 5.0, "images": 500, "machine_cpus": 2, "processes": procs,
            "roles": roles, "stack": fig(api + worker + redis, stack_cores),
            "client": fig(0.2, 0.04), "machine": fig(12.0, 1.99)}  # fmt: skip


def _row(clients: int, per_s: float, p50: float, p99: float, batch: float) -> dict[str, Any]:
    return {"phase": "served", "api_workers": 1, "concurrency": clients, "per_s": per_s,
            "p50_ms": p50, "p90_ms": p50, "p99_ms": p99, "mean_batch": batch,
            "errors": 0}  # fmt: skip


def test_noop_targets_and_table() -> None:
    served = [_row(1, 80.0, 12.0, 20.0, 1.0), _row(16, 200.0, 70.0, 200.0, 3.0)]
    served[1]["cpu"] = _cpu(api=0.5, worker=0.3, redis=0.1, stack_cores=0.9)
    result: dict[str, Any] = {
        "model": "noop", "device": "cpu", "images": 4, "image_size": "generated",
        "raw": None, "notes": ["raw limit: skipped (noop)"], "served": served,
    }  # fmt: skip
    verdict = {name: ok for name, _, _, ok in targets(result)}
    assert verdict == {
        "p99/p50 at 16 clients": True,  # 200/70 = 2.86 <= 3
        "API + Redis + worker CPU-ms per image at 16 clients": True,  # 0.9 <= 1.0
    }
    text = table(result)
    assert "raw limit: skipped (noop)" in text
    assert "PASS API + Redis + worker CPU-ms per image at 16 clients: 0.90 (target <= 1.00)" in text
    assert "per process (ms/image): api/1 0.25, api/2 0.25, worker-0 0.30" in text
    assert "worker: all of it is bookkeeping" in text
    assert "at 16 clients: stack 0.90 cores, load client 0.04, machine 1.99 of 2" in text
    served[1]["p99_ms"] = 220.0
    served[1]["cpu"] = _cpu(api=0.8, worker=0.3, redis=0.1, stack_cores=0.9)
    assert not any(ok for _, _, _, ok in targets(result))


def test_model_targets_with_cpu_and_fast_phase() -> None:
    raw = {"device": "cpu", "torch_threads": 2, "decode_per_s": 300.0, "single_image_ms": 10.0,
           "forward_per_s": {16: 400.0}, "full_per_s": {16: 200.0}, "best_batch": 16,
           "limit_per_s": 200.0}  # fmt: skip
    served = [_row(16, 180.0, 90.0, 180.0, 9.0), _row(32, 190.0, 160.0, 300.0, 14.0)]
    served[0]["cpu"] = _cpu(api=2.0, worker=8.0, redis=0.5, stack_cores=1.92)
    fast = [dict(r, phase="fast", per_s=r["per_s"] * 1.2) for r in served]
    result: dict[str, Any] = {"model": "m", "device": "cpu", "images": 4, "image_size": "g",
                              "raw": raw, "served": served, "fast": fast}  # fmt: skip
    got = {name: (round(value, 2), ok) for name, value, _, ok in targets(result)}
    assert got == {
        "served/raw at 16 clients": (0.9, True),
        "p99/p50 at 16 clients": (2.0, True),
        "stack cores busy at 16 clients": (1.92, True),  # >= 0.95 x 2 cores
        "fast/raw at 16 clients": (1.08, True),
    }
    text = table(result)
    assert "mean batch, served at 16 clients: 9.0" in text
    assert "mean batch, fast at 32 clients: 14.0" in text
    busy = copy.deepcopy(result)
    busy["served"][0]["cpu"]["stack"]["cores"] = 1.7
    assert ("stack cores busy at 16 clients", False) in [(n, ok) for n, _, _, ok in targets(busy)]


def _args(*argv: str) -> Any:
    return build_parser().parse_args(["bench", *argv])


def test_noop_plan_skips_raw_unbatched_and_fast() -> None:
    args = _args("--model", "noop", "--fast-decode", "--api-workers", "1,2")
    notes = resolve(args)
    assert args.concurrency == [1, 16, 64] and args.unbatched is False
    assert any(n.startswith("raw limit: skipped") for n in notes)
    assert any(n.startswith("unbatched: skipped") for n in notes)
    phases = plan_phases(args, "cpu")
    assert [(p.name, p.api_workers) for p in phases] == [("served", 1), ("served-api2", 2)]
    assert all(p.overrides["CUDA_VISIBLE_DEVICES"] == "" for p in phases)
    forced = _args("--model", "noop", "--unbatched")
    resolve(forced)
    assert [p.name for p in plan_phases(forced, "cuda")] == ["served", "unbatched"]


def test_model_plan_runs_every_phase() -> None:
    args = _args("--fast-decode", "--quick")
    assert resolve(args) == []
    assert args.concurrency == [1, 16, 32] and args.seconds == 5.0
    phases = {p.name: p for p in plan_phases(args, "cuda")}
    assert list(phases) == ["served", "unbatched", "fast"]
    assert phases["fast"].overrides == {"VISIONQ_MAX_BATCH_SIZE": "16", "VISIONQ_FAST_DECODE": "1"}
    assert phases["unbatched"].overrides == {"VISIONQ_MAX_BATCH_SIZE": "1"}
    given = _args("--concurrency", "2", "--no-unbatched")
    resolve(given)
    assert given.concurrency == [2] and [p.name for p in plan_phases(given, "cpu")] == ["served"]
