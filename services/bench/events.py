"""``visionq bench --events-cost``: what Celery events (``VISIONQ_CELERY_EVENTS``) cost.

The same stack runs with events on and off, alternately and ``--repeat`` times each, so
that a shared machine's drift falls on both sides. Each run measures served images/s, and
the CPU used per image by Redis (its INFO counters) and by the whole stack (``visionq up``
and every process under it: API, worker, Redis): on a busy shared machine images/s moves
with the neighbours' load, CPU per image much less.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from typing import Any

import psutil
import redis

from services.bench.load import run_load
from services.bench.stack import running_stack
from services.common.redis_server import free_port

MODES = {"on": "1", "off": "0"}


def measure_events_cost(
    args: argparse.Namespace, images: list[bytes], device: str
) -> dict[str, Any]:
    """Alternate events on/off runs; per mode every run and the mean, min and max."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    clients = max(args.concurrency)
    for round_ in range(args.repeat):
        # Alternate which mode goes first, so neither always runs on a warmer machine.
        order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
        for mode in order:
            overrides = {
                "VISIONQ_CELERY_EVENTS": MODES[mode],
                "VISIONQ_MAX_BATCH_SIZE": str(args.max_batch_size),
            }
            if device == "cpu":
                overrides["CUDA_VISIBLE_DEVICES"] = ""
            port, pids = free_port(), list[int]()
            print(f"events {mode} (round {round_ + 1}/{args.repeat}): {clients} clients ...")
            with running_stack(args.model, overrides, redis_port=port, pids=pids) as url:
                probes = {
                    "redis": partial(redis_cpu_seconds, f"redis://127.0.0.1:{port}/0"),
                    "stack": partial(tree_cpu_seconds, pids[0]),
                }
                load = run_load(url, args.model, images, clients, args.warmup, args.seconds, probes)
            point = load.to_json()
            for name, cores in (load.cpu_cores or {}).items():
                point[f"{name}_cpu_ms_per_image"] = 1000 * cores / load.per_s if load.per_s else 0
            runs[mode].append(point)
    return {"clients": clients, "runs": runs, "summary": summarize(runs)}


def redis_cpu_seconds(redis_url: str) -> float:
    """CPU seconds (user + system) the Redis server has used, from its INFO."""
    info = redis.Redis.from_url(redis_url, socket_timeout=5).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a process and every live process under it."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue  # ended meanwhile
        total += times.user + times.system
    return total


KEYS = ("per_s", "redis_cpu_ms_per_image", "stack_cpu_ms_per_image", "p99_ms")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Mean, min and max of each figure per mode, and on/off of the means."""
    out: dict[str, dict[str, float]] = {}
    for mode, points in runs.items():
        for key in KEYS:
            values = [float(p[key]) for p in points if p.get(key) is not None]
            if values:
                out.setdefault(mode, {}).update(
                    {
                        f"{key}_mean": statistics.fmean(values),
                        f"{key}_min": min(values),
                        f"{key}_max": max(values),
                    }
                )
    if "on" in out and "off" in out:
        out["on_vs_off"] = {
            key: out["on"][f"{key}_mean"] / out["off"][f"{key}_mean"]
            for key in KEYS
            if out["off"].get(f"{key}_mean")
        }
    return out


def events_table(result: dict[str, Any]) -> str:
    """A plain-text table of every run and the summary."""
    lines = [
        f"Celery events at {result['clients']} clients",
        "events | images/s | Redis CPU ms/image | stack CPU ms/image | p99 ms",
    ]
    for mode, points in result["runs"].items():
        for p in points:
            lines.append(
                f"{mode} | {p['per_s']:.1f} | {p['redis_cpu_ms_per_image']:.3f} | "
                f"{p['stack_cpu_ms_per_image']:.2f} | {p['p99_ms']:.0f}"
            )
    ratio = result["summary"].get("on_vs_off", {})
    if ratio:
        lines.append(
            "on/off of the means: "
            + ", ".join(f"{key} {ratio[key]:.3f}" for key in KEYS if key in ratio)
        )
    return "\n".join(lines)
