"""``visionq predict``: send image files to the API and write one JSON line per file."""

from __future__ import annotations

import json
import mimetypes
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from services.common.errors import ConfigError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, plus every image under the folders (recursive, sorted, no repeats)."""
    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for item in sorted(path.rglob("*")):
                if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES:
                    add(item)
        elif path.is_file():
            # A file named explicitly is sent whatever its suffix: the server decides.
            add(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return found


@dataclass(frozen=True)
class PredictOptions:
    """What to ask the server for each file."""

    url: str
    model: str | None = None
    top_k: int | None = None
    timeout_s: float | None = None
    concurrency: int = 4
    api_key: str | None = None


def _error(path: Path, code: str, message: str) -> dict[str, Any]:
    return {"filename": path.name, "path": str(path), "error": {"code": code, "message": message}}


def predict_one(client: httpx.Client, path: Path, opts: PredictOptions) -> dict[str, Any]:
    """POST one file to /v1/predict; the prediction object, or a record with an error."""
    data: dict[str, str] = {}
    if opts.model:
        data["model"] = opts.model
    if opts.top_k is not None:
        data["top_k"] = str(opts.top_k)
    if opts.timeout_s is not None:
        data["timeout"] = str(opts.timeout_s)
    try:
        content = path.read_bytes()
    except OSError as exc:
        return _error(path, "read_error", str(exc))
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        resp = client.post(
            f"{opts.url.rstrip('/')}/v1/predict",
            files={"file": (path.name, content, mime)},
            data=data,
        )
    except httpx.HTTPError as exc:
        return _error(path, "connection_error", f"{type(exc).__name__}: {exc}")
    try:
        body: Any = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return {"filename": path.name, "path": str(path), "error": err}
        return _error(path, f"http_{resp.status_code}", resp.text[:500])
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list) or not predictions:
        return _error(path, "bad_response", "the server's answer has no predictions")
    result: dict[str, Any] = dict(predictions[0])
    result.setdefault("model", body.get("model"))
    result["path"] = str(path)
    return result


class _Progress:
    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream
        self.live = stream.isatty()
        self._lock = threading.Lock()

    def tick(self, failed: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += failed
            if self.live:
                self.stream.write(f"\rpredict: {self.done}/{self.total}, {self.failed} failed")
                self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
        self.stream.write(f"predict: {self.done}/{self.total} done, {self.failed} failed\n")
        self.stream.flush()


def predict_files(
    files: list[Path], opts: PredictOptions, out: TextIO, progress: TextIO = sys.stderr
) -> int:
    """Predict every file with ``opts.concurrency`` requests in flight; the failure count."""
    http_timeout = (opts.timeout_s or 30.0) + 10.0  # the server waits first, then answers
    headers = {"X-API-Key": opts.api_key} if opts.api_key else {}
    bar = _Progress(len(files), progress)
    limits = httpx.Limits(max_connections=max(1, opts.concurrency))
    with (
        httpx.Client(timeout=http_timeout, headers=headers, limits=limits) as client,
        ThreadPoolExecutor(max_workers=max(1, opts.concurrency)) as pool,
    ):
        futures = [pool.submit(predict_one, client, path, opts) for path in files]
        for record in _completed(futures):
            failed = "error" in record
            out.write(json.dumps(record) + "\n")
            out.flush()
            bar.tick(failed)
    bar.close()
    return bar.failed


def _completed(futures: list[Any]) -> Iterator[dict[str, Any]]:
    for future in as_completed(futures):
        record: dict[str, Any] = future.result()
        yield record
