"""Where ``visionq predict`` writes: JSON lines or CSV, one row per file, flushed per row."""

from __future__ import annotations

import csv
import io
import json
import os
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
    "random_weights",
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
        "random_weights": "true" if record.get("random_weights") else ("" if error else "false"),
        "error_code": error.get("code", ""),
        "error_message": error.get("message", ""),
        **{k: timings.get(k, "") for k in ("queued_ms", "batch_size", "inference_ms", "total_ms")},
    }


def is_csv(path: Path) -> bool:
    """CSV when the output's name ends in .csv; JSON lines otherwise."""
    return path.suffix.lower() == ".csv"


# Errors that come from the file itself: sending it again gives the same answer. Anything
# else (timeouts, 429/503, connection errors, an expired or lost job) is worth another try.
PERMANENT_ERRORS = frozenset({"invalid_image", "unsupported_media_type", "payload_too_large"})


def _record_state(status: str, code: str) -> str:
    if status == "ok":
        return "ok"
    return "permanent" if code in PERMANENT_ERRORS else "transient"


def _read_rows(path: Path) -> list[tuple[str, str, str, str]]:
    """(absolute path, job id, state, the row as written) per complete row, in file order."""
    rows: list[tuple[str, str, str, str]] = []
    with path.open(encoding="utf-8", newline="") as stream:
        if is_csv(path):
            for row in csv.DictReader(stream):
                # A row cut short by an interrupted run has no status: send that file again.
                if row.get("status") not in ("ok", "failed") or not row.get("path"):
                    continue
                state = _record_state(row["status"], row.get("error_code") or "")
                key = str(Path(row["path"]).resolve())
                rows.append((key, row.get("job_id") or "", state, _csv_line(row)))
            return rows
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interrupted run
            if not isinstance(record, dict) or not record.get("path"):
                continue
            error = record.get("error")
            code = str(error.get("code", "")) if isinstance(error, dict) else ""
            state = _record_state("failed" if error else "ok", code)
            key = str(Path(record["path"]).resolve())
            rows.append((key, str(record.get("job_id", "")), state, line.rstrip("\n") + "\n"))
    return rows


def _csv_line(row: dict[str, Any]) -> str:
    buf = io.StringIO()
    csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore").writerow(row)
    return buf.getvalue()


def prepare_resume(path: Path, retry_failed: bool) -> set[str]:
    """Absolute paths that are done in ``path``; the file keeps one row for each, no other.

    Done means a result, or a permanent failure (the file itself is bad) unless
    ``retry_failed``. Rows of files to send again are dropped (and duplicates: the last
    answer wins), so the appended answers leave exactly one answer per file (one row, or a
    detector's one row per box).
    """
    if not path.exists() or path.stat().st_size == 0:
        return set()
    # path -> (job id, state, rows): the latest answer for each file. A detector's answer
    # is several CSV rows (one per box) with one job id; they stay together.
    latest: dict[str, tuple[str, str, list[str]]] = {}
    for key, job_id, state, line in _read_rows(path):
        previous = latest.get(key)
        if previous is not None and job_id and previous[0] == job_id:
            previous[2].append(line)
        else:
            latest[key] = (job_id, state, [line])
    done = {k: lines for k, (_, state, lines) in latest.items()
            if state == "ok" or (state == "permanent" and not retry_failed)}  # fmt: skip
    tmp = path.with_name(path.name + ".resume-tmp")
    with tmp.open("w", encoding="utf-8", newline="") as stream:
        if is_csv(path):
            csv.DictWriter(stream, CSV_COLUMNS).writeheader()
        for lines in done.values():
            stream.writelines(lines)
    os.replace(tmp, path)  # never a half-rewritten results file
    return set(done)


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
