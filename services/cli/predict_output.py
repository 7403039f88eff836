"""Where ``visionq predict`` writes: JSON lines or CSV, one row per file, flushed per row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TextIO

CSV_COLUMNS = [
    "path",
    "filename",
    "status",
    "model",
    "job_id",
    "label",
    "score",
    "top_k",
    "error_code",
    "error_message",
    "queued_ms",
    "batch_size",
    "inference_ms",
    "total_ms",
    "x1",
    "y1",
    "x2",
    "y2",
]
#: Tasks whose results fit CSV rows (one per file, or one per detected box).
CSV_TASKS = ("classification", "detection")


class Sink(Protocol):
    """Takes one record per file."""

    def write(self, record: dict[str, Any]) -> None:
        """Write and flush one record."""


class JsonlSink:
    """One JSON object per line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, record: dict[str, Any]) -> None:
        """Write and flush one record."""
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


class CsvSink:
    """CSV rows: one per file for classifiers (best label in columns, all of top-k in one
    cell), one per box for detectors (a file with no box still gets one row)."""

    def __init__(self, stream: TextIO, header: bool) -> None:
        self.stream = stream
        self.writer = csv.DictWriter(stream, CSV_COLUMNS)
        if header:
            self.writer.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        """Write and flush one record."""
        self.writer.writerows(csv_rows(record))
        self.stream.flush()


def csv_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A record as CSV rows: one per detected box, else one."""
    row = csv_row(record)
    detections = (record.get("result") or {}).get("detections")
    if not detections:
        return [row]
    rows = []
    for det in detections:
        x1, y1, x2, y2 = det["box"]
        box = {"x1": f"{x1:.2f}", "y1": f"{y1:.2f}", "x2": f"{x2:.2f}", "y2": f"{y2:.2f}"}
        rows.append({**row, "label": det["label"], "score": f"{det['score']:.6f}", **box})
    return rows


def csv_row(record: dict[str, Any]) -> dict[str, Any]:
    """A record flattened into CSV_COLUMNS."""
    error = record.get("error") or {}
    top = record.get("top_k") or []
    timings = record.get("timings") or {}
    return {
        "path": record.get("path", ""),
        "filename": record.get("filename", ""),
        "status": "failed" if error else "ok",
        "model": record.get("model", ""),
        "job_id": record.get("job_id", ""),
        "label": top[0]["label"] if top else "",
        "score": f"{top[0]['score']:.6f}" if top else "",
        "top_k": ";".join(f"{t['label']}={t['score']:.6f}" for t in top),
        "error_code": error.get("code", ""),
        "error_message": error.get("message", ""),
        **{k: timings.get(k, "") for k in ("queued_ms", "batch_size", "inference_ms", "total_ms")},
    }


def is_csv(path: Path) -> bool:
    """CSV when the output's name ends in .csv; JSON lines otherwise."""
    return path.suffix.lower() == ".csv"


def done_paths(path: Path) -> set[str]:
    """Absolute paths that already have a successful record in ``path`` (for --resume)."""
    if not path.exists():
        return set()
    done: set[str] = set()
    with path.open(encoding="utf-8", newline="") as stream:
        if is_csv(path):
            for row in csv.DictReader(stream):
                # A row cut short by an interrupted run has no status: send that file again.
                if row.get("status") == "ok" and row.get("path"):
                    done.add(str(Path(row["path"]).resolve()))
            return done
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interrupted run
            if isinstance(record, dict) and "error" not in record and record.get("path"):
                done.add(str(Path(record["path"]).resolve()))
    return done


@contextmanager
def open_sink(out: str | None, append: bool, stdout: TextIO) -> Iterator[Sink]:
    """A sink on ``out`` (stdout when None), appending for --resume."""
    if out is None:
        yield JsonlSink(stdout)
        return
    path = Path(out)
    existing = append and path.exists() and path.stat().st_size > 0
    with path.open("a" if append else "w", encoding="utf-8", newline="") as stream:
        if existing and not _ends_with_newline(path):
            stream.write("\n")  # finish a row an interrupted run left half written
        yield CsvSink(stream, header=not existing) if is_csv(path) else JsonlSink(stream)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as raw:
        raw.seek(-1, 2)
        return raw.read(1) == b"\n"
