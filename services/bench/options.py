"""The options of ``visionq bench``, apart from the harness so ``visionq --help`` stays light.

Building the parser imports this module on every command; the harness itself (numpy, PIL,
Redis, torch) is imported only when ``visionq bench`` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services.cli import argtypes

__all__ = ["add_arguments"]


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
        "--concurrency",
        type=_ints,
        default=None,
        help="client counts (default 1,16,32; 1,16,64 for --model noop)",
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
    p.add_argument(
        "--unbatched",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the stack with VISIONQ_MAX_BATCH_SIZE=1 too (default: yes, but not for noop)",
    )
    p.add_argument(
        "--fast-decode",
        action="store_true",
        help="add a phase 'fast': the served stack with VISIONQ_FAST_DECODE=1",
    )
    p.add_argument(
        "--api-workers",
        type=_ints,
        default=[1],
        help="API processes of the served stack; a list (1,2) runs it once per count",
    )
    p.add_argument(
        "--workers",
        type=argtypes.positive_int,
        default=None,
        help="workers of the served stack (visionq up --workers N: CPU workers without a "
        "GPU, else the first N GPUs; default: up's own, one CPU worker or every GPU)",
    )
    p.add_argument("--quick", action="store_true", help="a short run (well under 2 minutes)")
    p.add_argument(
        "--events-cost",
        action="store_true",
        help="only compare VISIONQ_CELERY_EVENTS on/off at the highest --concurrency",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per mode with --events-cost")
