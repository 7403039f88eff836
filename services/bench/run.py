"""Orchestrate a benchmark run: raw limit, served stack, unbatched stack; then report."""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path
from typing import Any

from services.bench.images import folder_images, generated_jpegs
from services.bench.load import run_load
from services.bench.raw import measure_raw
from services.bench.report import draw_chart, table, targets, write_json
from services.bench.stack import running_stack

logger = logging.getLogger(__name__)


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma list of positive integers, e.g. 1,4,16")
    return values


RESULTS = Path("results")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``visionq bench``."""
    p.add_argument("--model", default="mobilenet_v3_small", help="model to measure")
    p.add_argument("--images", type=Path, default=None, help="a folder (default: generated)")
    p.add_argument("--count", type=int, default=64, help="how many images to use")
    p.add_argument(
        "--concurrency", type=_ints, default=[1, 4, 16, 32], help="client counts, e.g. 1,4,16,32"
    )
    p.add_argument("--seconds", type=float, default=15.0, help="measured window per point")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up per point")
    p.add_argument(
        "--batch-sizes", type=_ints, default=[1, 4, 8, 16, 32], help="raw-limit batch sizes"
    )
    p.add_argument("--max-batch-size", type=int, default=16, help="the served stack's batch")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    # results/ is in .gitignore: a run never leaves files for `git add -A` to pick up.
    p.add_argument(
        "--out", type=Path, default=RESULTS / "bench.json", help="JSON file (default %(default)s)"
    )
    p.add_argument(
        "--chart", type=Path, default=RESULTS / "bench.png", help="PNG chart (default %(default)s)"
    )
    p.add_argument("--no-unbatched", action="store_true", help="skip the unbatched stack")
    p.add_argument("--quick", action="store_true", help="a short run (well under 2 minutes)")
    p.add_argument(
        "--events-cost",
        action="store_true",
        help="only compare VISIONQ_CELERY_EVENTS on/off at the highest --concurrency",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per mode with --events-cost")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    """Run every phase and write the report; exit 0 (targets are reported, not enforced)."""
    from models.specs import load_registry
    from services.common.settings import get_worker_settings

    if args.quick:
        args.concurrency, args.seconds, args.warmup = [1, 16], 5.0, 1.5
        args.batch_sizes, args.count = [1, 8, 16], 32
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
    print(f"raw limit: {args.model} on {device}, batch sizes {args.batch_sizes} ...", flush=True)
    seconds_raw = max(1.5, args.seconds / 3)
    raw = measure_raw(registry[args.model], images, args.batch_sizes, seconds_raw, device)
    result: dict[str, Any] = {
        "model": args.model,
        "images": len(images),
        "image_size": "generated 640x480 JPEG" if args.images is None else str(args.images),
        "machine": {"platform": platform.platform(), "cpus": _cpus()},
        "raw": raw.to_json(),
        "max_batch_size": args.max_batch_size,
    }
    phases = [("served", {"VISIONQ_MAX_BATCH_SIZE": str(args.max_batch_size)})]
    if not args.no_unbatched:
        phases.append(("unbatched", {"VISIONQ_MAX_BATCH_SIZE": "1"}))
    for kind, overrides in phases:
        if device == "cpu":
            overrides["CUDA_VISIBLE_DEVICES"] = ""
        result[kind] = []
        with running_stack(args.model, overrides) as url:
            for c in args.concurrency:
                print(f"{kind}: {c} clients for {args.seconds:g} s ...", flush=True)
                load = run_load(url, args.model, images, c, args.warmup, args.seconds)
                result[kind].append(load.to_json())
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
