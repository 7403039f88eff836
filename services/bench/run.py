"""Orchestrate a benchmark run: raw limit, served stack(s), unbatched, fast decode; report."""

from __future__ import annotations

import argparse
import logging
import platform
import time
from dataclasses import dataclass
from typing import Any

from services.bench.cpu import StackMeter
from services.bench.images import folder_images, generated_jpegs
from services.bench.load import run_load
from services.bench.raw import measure_raw
from services.bench.report import draw_chart, table, targets, write_json
from services.bench.stack import running_stack

logger = logging.getLogger(__name__)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


NOOP = "noop"


@dataclass(frozen=True)
class Phase:
    """One ``visionq up`` run of the benchmark: its name, its settings, its API processes."""

    name: str
    overrides: dict[str, str]
    api_workers: int = 1


def resolve(args: argparse.Namespace) -> list[str]:
    """Fill the defaults that depend on the model and ``--quick``; the notes they imply."""
    noop = args.model == NOOP
    if args.concurrency is None:
        args.concurrency = [1, 16, 64] if noop else [1, 16, 32]
    if args.quick:
        args.seconds, args.warmup = 5.0, 1.5
        args.batch_sizes, args.count = [1, 8, 16], 32
    notes = []
    if noop:
        notes.append("raw limit: skipped (noop has no decode and no forward to measure)")
        if args.unbatched is None:
            notes.append("unbatched: skipped for noop (--unbatched runs it)")
        if args.fast_decode:
            notes.append("fast: skipped (noop decodes nothing)")
    if args.unbatched is None:
        args.unbatched = not noop
    return notes


def plan_phases(args: argparse.Namespace, device: str) -> list[Phase]:
    """served once per ``--api-workers`` count, then unbatched and fast when asked."""
    batch = {"VISIONQ_MAX_BATCH_SIZE": str(args.max_batch_size)}
    first, *more = args.api_workers
    phases = [Phase("served", batch, first)]
    phases += [Phase(f"served-api{n}", batch, n) for n in more]
    if args.unbatched:
        phases.append(Phase("unbatched", {"VISIONQ_MAX_BATCH_SIZE": "1"}, first))
    if args.fast_decode and args.model != NOOP:
        phases.append(Phase("fast", {**batch, "VISIONQ_FAST_DECODE": "1"}, first))
    if device == "cpu":
        phases = [Phase(p.name, {**p.overrides, "CUDA_VISIBLE_DEVICES": ""}, p.api_workers)
                  for p in phases]  # fmt: skip
    return phases


def run(args: argparse.Namespace) -> int:
    """Run every phase and write the report; exit 0 (targets are reported, not enforced)."""
    from models.specs import load_registry
    from services.common.settings import get_worker_settings

    notes = resolve(args)
    settings = get_worker_settings()
    registry = load_registry(settings.models_file)
    if args.model not in registry:
        print(f"unknown model {args.model!r}; known: {', '.join(sorted(registry))}")
        return 2
    images = folder_images(args.images, args.count) if args.images else generated_jpegs(args.count)
    device = _device(args.device)
    started = time.time()
    if args.events_cost:
        from services.bench.events import events_table, measure_events_cost

        cost = measure_events_cost(args, images, device)
        cost.update(model=args.model, wall_s=round(time.time() - started, 1))
        print(events_table(cost))
        write_json(cost, args.out)
        print(f"wrote {args.out}")
        return 0
    raw = None
    if args.model != NOOP:
        sizes = args.batch_sizes
        print(f"raw limit: {args.model} on {device}, batch sizes {sizes} ...", flush=True)
        seconds_raw = max(1.5, args.seconds / 3)
        raw = measure_raw(registry[args.model], images, args.batch_sizes, seconds_raw, device)
    result: dict[str, Any] = {
        "model": args.model,
        "device": device,
        "images": len(images),
        "image_size": "generated 640x480 JPEG" if args.images is None else str(args.images),
        "machine": {"platform": platform.platform(), "cpus": _cpus()},
        "raw": raw.to_json() if raw is not None else None,
        "max_batch_size": args.max_batch_size,
        "workers": args.workers,  # None: visionq up's default
        "notes": notes,
    }
    for phase in plan_phases(args, device):
        result[phase.name] = []
        pids: list[int] = []
        with running_stack(args.model, phase.overrides, pids=pids,
                           api_workers=phase.api_workers, workers=args.workers) as url:  # fmt: skip
            for c in args.concurrency:
                print(f"{phase.name}: {c} clients for {args.seconds:g} s ...", flush=True)
                meter = StackMeter(pids[0])
                load = run_load(url, args.model, images, c, args.warmup, args.seconds, meter=meter)
                row = {"phase": phase.name, "api_workers": phase.api_workers, **load.to_json()}
                if args.model == NOOP and row.get("cpu"):
                    # No decode, no forward: every worker CPU-ms is bookkeeping.
                    row["cpu"]["worker_bookkeeping"] = row["cpu"]["roles"]["worker"]
                result[phase.name].append(row)
    result["targets"] = [
        {"name": n, "measured": g, "target": t, "met": ok} for n, g, t, ok in targets(result)
    ]
    result["wall_s"] = round(time.time() - started, 1)
    print(table(result))
    write_json(result, args.out)
    draw_chart(result, args.chart)
    print(f"wrote {args.out} and {args.chart} in {result['wall_s']} s")
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
