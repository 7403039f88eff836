"""``make gpu-check``: everything to run on a GPU box, in one go, under 8 minutes on an H200.

1. a driver/CUDA report (nvidia-smi, torch's CUDA build, the device torch sees);
2. ``pytest tests/gpu`` with ``TORCH_LOGS=recompiles``, counting recompilations (after the
   warm-up of every bucket there should be none);
3. ``visionq bench`` for resnet50 in fp16, CPU decode and then GPU decode (nvJPEG), at 1,
   16 and 64 clients, each with the raw limit measured in-process on the same path (same
   settings, dtype, decode, GPU).

It writes one JSON (``gpu-check.json``: report, test summary, both bench results) and one
chart (``gpu-check.png``). Without CUDA it prints what it would run and exits 0, so the
target can be checked anywhere. Usage: ``python -m services.bench.gpu_check [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "resnet50"
CLIENTS = "1,16,64"
MAX_BATCH = "64"
# What both bench runs share: fp16 autocast, batches padded to buckets (static shapes).
COMMON_ENV = {"VISIONQ_AUTOCAST_DTYPE": "float16", "VISIONQ_BATCH_BUCKETS": "1"}
VARIANTS = {"cpu_decode": {"VISIONQ_GPU_DECODE": "0"}, "gpu_decode": {"VISIONQ_GPU_DECODE": "1"}}
_RECOMPILE = re.compile(r"Recompiling function", re.IGNORECASE)


def plan(out: Path, python: str = sys.executable) -> list[tuple[str, dict[str, str], list[str]]]:
    """The steps: (name, extra environment, argv), in order."""
    steps: list[tuple[str, dict[str, str], list[str]]] = [
        ("tests", {"TORCH_LOGS": "recompiles"}, [python, "-m", "pytest", "-q", "-s", "tests/gpu"])
    ]
    for name, env in VARIANTS.items():
        argv = [
            python, "-m", "services.cli.main", "bench", "--model", MODEL, "--device", "cuda",
            "--concurrency", CLIENTS, "--batch-sizes", f"1,16,{MAX_BATCH}",
            "--max-batch-size", MAX_BATCH, "--seconds", "10", "--warmup", "3", "--count", "64",
            "--no-unbatched", "--out", str(out / f"bench-{name}.json"),
            "--chart", str(out / f"bench-{name}.png"),
        ]  # fmt: skip
        steps.append((f"bench {name}", {**COMMON_ENV, **env}, argv))
    return steps


def count_recompiles(log: str) -> int:
    """Recompilations that ``TORCH_LOGS=recompiles`` reported in a log."""
    return len(_RECOMPILE.findall(log))


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (in a child process: CUDA stays out of this one)."""
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def driver_report() -> dict[str, Any]:
    """nvidia-smi's view and torch's view of the GPU and its CUDA."""
    report: dict[str, Any] = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "name,driver_version,memory.total,pci.bus_id,mig.mode.current"
        res = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        report["nvidia_smi"] = res.stdout.strip() or res.stderr.strip()
    code = (
        "import json, torch; p = torch.cuda.get_device_properties(0); print(json.dumps({"
        "'torch': torch.__version__, 'cuda': torch.version.cuda,"
        "'cudnn': torch.backends.cudnn.version(), 'device': p.name,"
        "'capability': f'{p.major}.{p.minor}', 'memory_bytes': p.total_memory}))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    report["torch"] = json.loads(res.stdout) if res.returncode == 0 else res.stderr[-2000:]
    return report


def _run_step(name: str, env: dict[str, str], argv: list[str], out: Path) -> dict[str, Any]:
    print(f"== {name}: {' '.join(argv)}", flush=True)
    start = time.time()
    res = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    log = res.stdout + res.stderr
    (out / f"{name.replace(' ', '-')}.log").write_text(log)
    print(log[-3000:], flush=True)
    return {"returncode": res.returncode, "wall_s": round(time.time() - start, 1), "log": log}


def draw(results: dict[str, Any], path: Path) -> None:
    """Served images/s per client count for both decode paths, their raw limits as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, result), colour in zip(results.items(), ("tab:blue", "tab:orange"), strict=False):
        rows = result.get("served", [])
        ax.plot([r["concurrency"] for r in rows], [r["per_s"] for r in rows], "o-",
                color=colour, label=f"served, {name}")  # fmt: skip
        ax.axhline(result["raw"]["limit_per_s"], color=colour, linestyle=":",
                   label=f"raw limit, {name}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("images / s")
    ax.set_title(f"visionq {MODEL} fp16")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the check (or, without CUDA, print its plan); 0 unless a step failed."""
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    args = parser.parse_args(argv)
    steps = plan(args.out)
    if args.dry_run or not cuda_available():
        print("no CUDA device here: gpu-check would run" if not args.dry_run else "would run")
        print("  1. driver report: nvidia-smi --query-gpu=...; torch.version.cuda")
        for i, (name, env, cmd) in enumerate(steps, start=2):
            envs = " ".join(f"{k}={v}" for k, v in env.items())
            print(f"  {i}. {name}: {envs} {' '.join(cmd)}")
        print(f"  then: {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.png'}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    summary: dict[str, Any] = {"date": time.strftime("%Y-%m-%d", time.gmtime())}
    summary["report"] = driver_report()
    print(json.dumps(summary["report"], indent=2), flush=True)
    ok = True
    benches: dict[str, Any] = {}
    for name, env, cmd in steps:
        step = _run_step(name, env, cmd, args.out)
        ok = ok and step["returncode"] == 0
        log = step.pop("log")
        if name == "tests":
            step["recompiles"] = count_recompiles(log)
            tail = [ln for ln in log.splitlines() if " passed" in ln or " failed" in ln]
            step["summary"] = tail[-1] if tail else ""
            summary["tests"] = step
            continue
        variant = name.split()[-1]
        path = args.out / f"bench-{variant}.json"
        benches[variant] = json.loads(path.read_text()) if path.exists() else {}
        summary.setdefault("bench_steps", {})[variant] = step
    summary["bench"] = benches
    summary["wall_s"] = round(time.time() - started, 1)
    (args.out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
    complete = {k: v for k, v in benches.items() if v.get("served") and v.get("raw")}
    if complete:
        draw(complete, args.out / "gpu-check.png")
    print(f"gpu-check: {'ok' if ok else 'FAILED'} in {summary['wall_s']} s; see {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
