"""``visionq bench --events-cost``: what Celery events (``VISIONQ_CELERY_EVENTS``) cost.

The same stack runs with events on and off, alternately and ``--repeat`` times each, so
that a shared machine's drift falls on both sides; each run measures served images/s and
Redis's own CPU (from its INFO counters) at the given client count.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

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
            port = free_port()
            print(f"events {mode} (round {round_ + 1}/{args.repeat}): {clients} clients ...")
            with running_stack(args.model, overrides, redis_port=port) as url:
                load = run_load(
                    url,
                    args.model,
                    images,
                    clients,
                    args.warmup,
                    args.seconds,
                    redis_url=f"redis://127.0.0.1:{port}/0",
                )
            runs[mode].append(load.to_json())
    return {"clients": clients, "runs": runs, "summary": summarize(runs)}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Mean, min and max of images/s and Redis cores per mode, and on/off of the means."""
    out: dict[str, dict[str, float]] = {}
    for mode, points in runs.items():
        for key in ("per_s", "redis_cpu_cores", "p99_ms"):
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
            for key in ("per_s", "redis_cpu_cores", "p99_ms")
            if out["off"].get(f"{key}_mean")
        }
    return out


def events_table(result: dict[str, Any]) -> str:
    """A plain-text table of every run and the summary."""
    lines = [f"Celery events at {result['clients']} clients", "mode | images/s | redis cores"]
    for mode, points in result["runs"].items():
        for p in points:
            lines.append(f"{mode} | {p['per_s']:.1f} | {p['redis_cpu_cores']:.3f}")
    ratio = result["summary"].get("on_vs_off", {})
    if ratio:
        lines.append(
            f"on/off: images/s {ratio.get('per_s', float('nan')):.3f}, "
            f"Redis CPU {ratio.get('redis_cpu_cores', float('nan')):.2f}x"
        )
    return "\n".join(lines)
