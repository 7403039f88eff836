"""``make gpu-check`` on a machine without CUDA: prints its plan, runs nothing, exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.bench.gpu_check import count_recompiles, plan

ROOT = Path(__file__).resolve().parents[2]


def test_without_cuda_it_prints_the_plan_and_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [sys.executable, "-m", "services.bench.gpu_check", "--out", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "no CUDA device here" in res.stdout
    assert "tests/gpu" in res.stdout
    assert res.stdout.count("--model resnet50") == 2
    assert "VISIONQ_GPU_DECODE=1" in res.stdout and "VISIONQ_GPU_DECODE=0" in res.stdout
    assert not (tmp_path / "out").exists()  # nothing ran


def test_the_plan_benches_both_decode_paths_at_1_16_64_clients(tmp_path: Path) -> None:
    steps = plan(tmp_path)
    assert [name for name, _, _ in steps] == ["tests", "bench cpu_decode", "bench gpu_decode"]
    for _, env, argv in steps[1:]:
        assert env["VISIONQ_AUTOCAST_DTYPE"] == "float16"
        assert argv[argv.index("--concurrency") + 1] == "1,16,64"
        assert argv[argv.index("--device") + 1] == "cuda"


def test_makefile_has_the_target() -> None:
    text = (ROOT / "Makefile").read_text()
    assert "\ngpu-check:" in text and "services.bench.gpu_check" in text


def test_recompiles_are_counted_from_torch_logs() -> None:
    log = (
        "V1130 torch/_dynamo/guards.py] [__recompiles] Recompiling function forward in x.py:3\n"
        "other line\n"
        "V1130 torch/_dynamo/guards.py] [__recompiles] Recompiling function forward in x.py:3\n"
    )
    assert count_recompiles(log) == 2
    assert count_recompiles("all good") == 0
