"""How far ``VISIONQ_FAST_DECODE`` moves results, and what it saves: exact vs fast decode.

``python -m models.imaging.fast_decode_check`` builds the calibrated seeded
``mobilenet_v3_small`` (``models.seeded``), decodes a few hundred generated images of
varied sizes both ways and prints top-1 agreement, top-5 overlap, the largest and the mean
absolute softmax-score difference, and single-thread decode + preprocess CPU time
(``time.process_time``, so other load on the machine matters less) per image size.
``--min-side resize`` measures the stricter draft bound (never upscale the crop) instead of
the one served (``models.preprocess.fast_min_side``). Needs torch and torchvision.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from models.preprocess import (
    decode_and_preprocess,
    decode_scaled,
    normalize_batch_numpy,
    preprocess_fast,
)
from models.specs import Preprocess

LIMIT = 100_000_000
# (width, height, format); cycled. 640x480 is the benchmark's size; the rest are phone and
# camera sizes, portrait and landscape, one too small to scale, and a PNG (never drafted).
SIZES: tuple[tuple[int, int, str], ...] = (
    (640, 480, "bench"),
    (640, 480, "JPEG"),
    (480, 640, "JPEG"),
    (800, 600, "JPEG"),
    (1024, 768, "JPEG"),
    (1280, 720, "JPEG"),
    (1080, 1350, "JPEG"),
    (1920, 1080, "JPEG"),
    (2048, 1536, "JPEG"),
    (4000, 3000, "JPEG"),
    (320, 240, "JPEG"),
    (1600, 1200, "PNG"),
)
SMALL_SIZES = tuple(s for s in SIZES if s[0] * s[1] <= 1024 * 768)


def textured_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like RGB picture: 1/f noise (natural images' spectrum), shapes, fine grain."""
    width, height = size
    rng = np.random.default_rng(seed)
    sw, sh = min(width, 512), min(height, 512)
    fy = np.fft.fftfreq(sh)[:, None]
    fx = np.fft.rfftfreq(sw)[None, :]
    falloff = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(sw, sh)) ** rng.uniform(0.8, 1.2)
    channels = []
    for _ in range(3):
        noise = np.fft.irfft2(np.fft.rfft2(rng.normal(size=(sh, sw))) * falloff, s=(sh, sw))
        level, spread = rng.uniform(70, 180), rng.uniform(25, 55)
        channels.append((noise - noise.mean()) / (noise.std() + 1e-9) * spread + level)
    base = Image.fromarray(np.stack(channels, -1).clip(0, 255).astype(np.uint8), "RGB")
    base = base.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(width // 20 + 1, width // 2 + 2))
        y1 = y0 + int(rng.integers(height // 20 + 1, height // 2 + 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour)
    grain = rng.normal(0, 5, (height, width, 3)).astype(np.float32)
    pixels = (np.asarray(base, dtype=np.float32) + grain).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def sample_images(
    count: int, seed: int = 0, sizes: Sequence[tuple[int, int, str]] = SIZES
) -> list[tuple[str, bytes]]:
    """``count`` (size label, encoded bytes) pairs, cycling through ``sizes``; the same
    every run. ``bench`` entries are the benchmark's own JPEGs (``generated_jpegs``)."""
    from services.bench.images import generated_jpegs

    out = []
    for i in range(count):
        width, height, kind = sizes[i % len(sizes)]
        label = f"{width}x{height}" + (" PNG" if kind == "PNG" else "")
        if kind == "bench":
            out.append((label + " bench", generated_jpegs(1, (width, height), seed + i)[0]))
            continue
        buf = io.BytesIO()
        options = {"quality": 90} if kind == "JPEG" else {"compress_level": 1}
        textured_image((width, height), seed + i).save(buf, kind, **options)
        out.append((label, buf.getvalue()))
    return out


Decoder = Callable[[bytes], npt.NDArray[np.uint8]]


def decoders(pre: Preprocess, min_side: str = "input") -> tuple[Decoder, Decoder]:
    """(exact, fast) decode + preprocess functions, uint8 (3, S, S) each."""

    def exact(data: bytes) -> npt.NDArray[np.uint8]:
        return decode_and_preprocess(data, pre, max_pixels=LIMIT)

    def fast(data: bytes) -> npt.NDArray[np.uint8]:
        if min_side == "input":  # the served path itself
            return decode_and_preprocess(data, pre, max_pixels=LIMIT, fast_decode=True)
        image, _ = decode_scaled(data, max_pixels=LIMIT, min_side=pre.resize_size)
        return preprocess_fast(image, pre)

    return exact, fast


@dataclass
class Agreement:
    """Exact vs fast decode on one model and one set of images."""

    images: int
    top1_agreement: float  # share of images whose top-1 class is the same
    top5_overlap: float  # mean share of the exact top-5 classes found in the fast top-5
    max_abs_diff: float  # largest |score difference| over every image and class
    mean_abs_diff: float  # mean |score difference| over every image and class
    exact_top1_distinct: int  # how many different top-1 classes the exact path gives
    # size label -> {"images", "exact_ms", "fast_ms", "exact_per_s", "fast_per_s",
    # "top1_agreement", "max_abs_diff"}
    decode: dict[str, dict[str, float]] = field(default_factory=dict)


def _scores(model: Any, pre: Preprocess, arrays: list[npt.NDArray[np.uint8]]) -> Any:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(arrays), 32):
            batch = normalize_batch_numpy(np.stack(arrays[start : start + 32]), pre)
            out.append(torch.softmax(model(torch.from_numpy(batch)), dim=1))
    return torch.cat(out)


def _timed(decode: Decoder, data: bytes) -> tuple[npt.NDArray[np.uint8], float]:
    start = time.process_time()
    array = decode(data)
    return array, time.process_time() - start


def compare(
    images: list[tuple[str, bytes]], model: Any, pre: Preprocess, min_side: str = "input"
) -> Agreement:
    """Decode every image both ways (timed, one thread), score both with ``model``."""
    exact, fast = decoders(pre, min_side)
    exact(images[0][1]), fast(images[0][1])  # warm the decoders
    seconds: dict[str, list[float]] = {}
    exact_arrays, fast_arrays = [], []
    for label, data in images:
        array, exact_s = _timed(exact, data)
        exact_arrays.append(array)
        array, fast_s = _timed(fast, data)
        fast_arrays.append(array)
        totals = seconds.setdefault(label, [0.0, 0.0, 0.0])
        totals[0] += 1
        totals[1] += exact_s
        totals[2] += fast_s
    ref, got = _scores(model, pre, exact_arrays), _scores(model, pre, fast_arrays)
    diff = (got - ref).abs()
    same = (ref.argmax(1) == got.argmax(1)).tolist()
    worst = diff.max(1).values.tolist()
    by_label: dict[str, list[tuple[bool, float]]] = {}
    for (label, _), agrees, largest in zip(images, same, worst, strict=True):
        by_label.setdefault(label, []).append((agrees, largest))
    top5_ref, top5_got = ref.topk(5).indices.tolist(), got.topk(5).indices.tolist()
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(top5_ref, top5_got, strict=True)]
    return Agreement(
        images=len(images),
        top1_agreement=float(np.mean(same)),
        top5_overlap=float(np.mean(overlap)),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        exact_top1_distinct=len(set(ref.argmax(1).tolist())),
        decode={
            label: {
                "images": n,
                "exact_ms": 1000 * e / n,
                "fast_ms": 1000 * f / n,
                "exact_per_s": n / e if e else float("inf"),
                "fast_per_s": n / f if f else float("inf"),
                "top1_agreement": float(np.mean([a for a, _ in by_label[label]])),
                "max_abs_diff": max(d for _, d in by_label[label]),
            }
            for label, (n, e, f) in seconds.items()
        },
    )


def _table(result: Agreement) -> str:
    lines = [
        "| image | n | exact ms | fast ms | exact img/s | fast img/s | speed-up | top-1 same "
        "| max diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in result.decode.items():
        lines.append(
            f"| {label} | {row['images']:.0f} | {row['exact_ms']:.2f} | {row['fast_ms']:.2f} | "
            f"{row['exact_per_s']:.0f} | {row['fast_per_s']:.0f} | "
            f"{row['exact_ms'] / max(row['fast_ms'], 1e-9):.2f}x | "
            f"{row['top1_agreement']:.2f} | {row['max_abs_diff']:.1e} |"
        )
    lines.append(
        f"\n{result.images} images: top-1 agreement {result.top1_agreement:.4f}, top-5 "
        f"overlap {result.top5_overlap:.4f}, largest |score diff| {result.max_abs_diff:.2e}, "
        f"mean {result.mean_abs_diff:.2e} ({result.exact_top1_distinct} distinct exact top-1)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the comparison as a Markdown table; ``--json`` saves it."""
    parser = argparse.ArgumentParser(prog="python -m models.imaging.fast_decode_check")
    parser.add_argument("--count", type=int, default=300, help="images (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="mobilenet_v3_small", help="whose preprocessing")
    parser.add_argument(
        "--min-side", choices=("input", "resize"), default="input", help="draft bound"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import torch

    from models import BUILTIN_MODELS
    from models.seeded import seeded_classifier

    torch.set_num_threads(1)  # the decode timings are single-thread; keep the machine calm
    pre = BUILTIN_MODELS[args.model].preprocess
    result = compare(sample_images(args.count, args.seed), seeded_classifier(), pre, args.min_side)
    print(_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
