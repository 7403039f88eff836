"""The benchmark's table, JSON and chart, and its verdict against the targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def targets(result: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(name, measured, required, met) for each target of the performance issue."""
    raw = result["raw"]
    served = {r["concurrency"]: r for r in result["served"]}
    unbatched = {r["concurrency"]: r for r in result.get("unbatched", [])}
    # The performance issue judges the served stack at 16 clients; else the busiest point.
    top = 16 if 16 in served else max(served)
    out: list[tuple[str, float, float, bool]] = []
    ratio = served[top]["per_s"] / raw["limit_per_s"]
    out.append((f"served/raw at {top} clients", ratio, 0.75, ratio >= 0.75))
    if top in unbatched and unbatched[top]["per_s"] > 0:
        gain = served[top]["per_s"] / unbatched[top]["per_s"]
        out.append((f"batched/unbatched at {top} clients", gain, 1.3, gain >= 1.3))
    if 1 in served:
        bound = raw["single_image_ms"] + 10.0
        p50 = served[1]["p50_ms"]
        out.append(("p50 at 1 client (ms) <= raw single + 10", p50, bound, p50 <= bound))
    spread = served[top]["p99_ms"] / served[top]["p50_ms"]
    out.append((f"p99/p50 at {top} clients", spread, 4.0, spread <= 4.0))
    return out


def table(result: dict[str, Any]) -> str:
    """A plain-text report."""
    raw = result["raw"]
    lines = [
        f"model {result['model']} on {raw['device']} ({raw['torch_threads']} torch threads), "
        f"{result['images']} images {result['image_size']}",
        f"raw: decode+preprocess {raw['decode_per_s']:.1f}/s; "
        f"single image {raw['single_image_ms']:.1f} ms",
        "  batch  forward/s  decode+forward/s",
    ]
    for size, rate in raw["full_per_s"].items():
        lines.append(f"  {int(size):5d}  {raw['forward_per_s'][size]:9.1f}  {rate:16.1f}")
    lines.append(f"raw limit: {raw['limit_per_s']:.1f}/s at batch {raw['best_batch']}")
    lines.append(
        "stack       clients  images/s   p50 ms   p90 ms   p99 ms  batch  errors  client cpu"
    )
    for kind in ("served", "unbatched"):
        for r in result.get(kind, []):
            lines.append(
                f"{kind:10s} {r['concurrency']:8d} {r['per_s']:9.1f} {r['p50_ms']:8.1f} "
                f"{r['p90_ms']:8.1f} {r['p99_ms']:8.1f} {r['mean_batch']:6.1f} {r['errors']:7d}"
                f"  {r['client_cpu_cores']:.2f}"
            )
    lines.append("targets:")
    for name, got, need, ok in targets(result):
        lines.append(f"  {'PASS' if ok else 'MISS'} {name}: {got:.2f} (target {need:.2f})")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    """The full result as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def draw_chart(result: dict[str, Any], path: Path) -> None:
    """Throughput and p99 against concurrency, the raw limit as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for kind, style in (("served", "o-"), ("unbatched", "s--")):
        rows = result.get(kind, [])
        if rows:
            xs = [r["concurrency"] for r in rows]
            top.plot(xs, [r["per_s"] for r in rows], style, label=kind)
            bottom.plot(xs, [r["p99_ms"] for r in rows], style, label=f"{kind} p99")
    top.axhline(result["raw"]["limit_per_s"], color="grey", linestyle=":", label="raw limit")
    top.set_ylabel("images / s")
    top.set_title(f"visionq {result['model']} on {result['raw']['device']}")
    top.legend()
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_xlabel("concurrent clients")
    bottom.set_xscale("log", base=2)
    bottom.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
