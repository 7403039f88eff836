"""``visionq bench --model noop`` end to end: a real ``visionq up`` per API worker count, a
real load, and CPU figures per process read from the OS (plausible, not exact: on a shared
machine only their signs and sums can be checked).

The command is README's ``--api-workers`` line, with a short window of its own: this is
its README test too (tests/integration/test_readme.py leaves it to this one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.stack import ROOT
from tests.integration.test_readme import (
    bench_args,
    check_bench_output,
    commands,
    kind,
    run_elsewhere,
)

pytestmark = pytest.mark.integration

# Counters tick every 10 ms per process; each process's delta can be off by a tick or two.
TICKS_S = 0.03


def _check_point(row: dict[str, Any]) -> None:
    assert row["completed"] > 0 and row["errors"] == 0, row
    cpu = row["cpu"]
    roles = cpu["roles"]
    assert roles["api"]["cpu_s"] > 0 and roles["worker"]["cpu_s"] > 0, roles
    assert roles["api"]["ms_per_image"] > 0 and roles["worker"]["ms_per_image"] > 0
    assert all(fig["cpu_s"] >= 0 for fig in roles.values()), roles
    assert {p["role"] for p in cpu["processes"]} >= {"supervisor", "api", "worker", "redis"}
    assert cpu["client"]["cpu_s"] > 0
    # The parts (stack processes + the load client) fit in what the whole machine used.
    parts = cpu["stack"]["cpu_s"] + cpu["client"]["cpu_s"]
    slack = TICKS_S * (len(cpu["processes"]) + 2)
    assert parts <= cpu["machine"]["cpu_s"] * 1.05 + slack, (parts, cpu["machine"])
    assert cpu["machine"]["cores"] <= cpu["machine_cpus"] * 1.05 + 0.05, cpu["machine"]


@pytest.mark.timeout(120)
def test_noop_bench_reports_cpu_per_process(tmp_path: Path) -> None:
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update({"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "VISIONQ_ALLOW_DOWNLOAD": "0"})
    (line,) = [c for c in commands() if kind(c) == "bench" and run_elsewhere(c)]
    args = bench_args(line)  # as written, less --quick (its window is replaced below)
    assert args == ["bench", "--model", "noop", "--api-workers", "1,2"], line
    argv = [sys.executable, "-m", "services.cli.main", *args,
            "--concurrency", "1,4", "--seconds", "1.5", "--warmup", "0.3", "--count", "8",
            "--out", str(out), "--chart", str(chart)]  # fmt: skip
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=110, env=env)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
    check_bench_output(run.stdout, out, chart)
    assert "raw limit: skipped" in run.stdout and "CPU per image" in run.stdout
    assert "API + Redis + worker CPU-ms per image at 4 clients" in run.stdout
    result = json.loads(out.read_text())
    assert result["raw"] is None and "unbatched" not in result
    assert [r["api_workers"] for r in result["served"]] == [1, 1]
    assert [r["api_workers"] for r in result["served-api2"]] == [2, 2]
    for row in result["served"] + result["served-api2"]:
        _check_point(row)
        assert row["cpu"]["worker_bookkeeping"] == row["cpu"]["roles"]["worker"]
    # Two uvicorn processes under the API's own, labelled apart (the kernel may hand all
    # four connections to one of them, so only their sum must be busy).
    api = [p for p in result["served-api2"][1]["cpu"]["processes"] if p["role"] == "api"]
    children = {p["label"]: p["cpu_s"] for p in api if p["label"] in ("api/1", "api/2")}
    assert len(children) == 2 and sum(children.values()) > 0, api
    assert chart.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(120)
def test_bench_workers_runs_that_many_workers(tmp_path: Path) -> None:
    """``--workers 2``: two CPU worker processes under ``visionq up``, each measured apart."""
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update({"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "VISIONQ_ALLOW_DOWNLOAD": "0"})
    argv = [sys.executable, "-m", "services.cli.main", "bench", "--model", "noop",
            "--workers", "2", "--concurrency", "8", "--seconds", "1.5", "--warmup", "0.3",
            "--count", "8", "--out", str(out), "--chart", str(chart)]  # fmt: skip
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=110, env=env)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
    assert "on cpu, 2 workers" in run.stdout, run.stdout
    result = json.loads(out.read_text())
    assert result["workers"] == 2
    (row,) = result["served"]
    _check_point(row)
    workers = [p for p in row["cpu"]["processes"] if p["role"] == "worker"]
    assert sorted(p["label"] for p in workers) == ["worker-0", "worker-1"], workers


def test_bench_workers_must_be_a_positive_integer() -> None:
    argv = [sys.executable, "-m", "services.cli.main", "bench", "--workers", "0"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'0' is not a positive integer" in done.stderr, done.stderr
