"""Benchmark inputs: deterministic generated JPEGs, or the image files of a folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def generated_jpegs(count: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[bytes]:
    """``count`` photo-like JPEGs (smooth gradients, blocks and noise), the same every run."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(count):
        fx, fy = rng.uniform(4, 40, 2)
        img = np.stack(
            [
                (np.sin(x / fx + i) + 1) * 110,
                (np.cos(y / fy - i) + 1) * 110,
                ((x * (i + 1) + y) / (w + h)) * 200 % 255,
            ],
            axis=-1,
        )
        for _ in range(8):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            dx, dy = int(rng.integers(20, w // 3)), int(rng.integers(20, h // 3))
            img[y0 : y0 + dy, x0 : x0 + dx] = rng.integers(0, 255, 3)
        img += rng.normal(0, 6, img.shape)
        buf = io.BytesIO()
        Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def folder_images(folder: Path, limit: int) -> list[bytes]:
    """Up to ``limit`` image files from ``folder`` (recursive, sorted for repeatability)."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not paths:
        raise ValueError(f"no .jpg/.jpeg/.png/.webp files under {folder}")
    return [p.read_bytes() for p in paths[:limit]]
