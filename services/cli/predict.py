"""``visionq predict``: send image files to the API, stream one result per file to JSONL or CSV.

Results are written and flushed as they arrive, so an interrupted run keeps what it has and
``--resume`` sends only the files that have no successful result in the output yet.
"""

from __future__ import annotations

import asyncio
import glob
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from services.cli.predict_output import CSV_TASKS, Sink, done_paths, is_csv, open_sink
from services.client import ApiError, AsyncClient, Client, ClientError, RetryPolicy
from services.common.errors import ConfigError

# Every format the server may accept; the server decides (415 for one it does not).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
_GLOB_CHARS = frozenset("*?[")

Record = dict[str, Any]


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as named, images under folders (recursive) and glob matches; no repeats."""
    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    def add_tree(folder: Path) -> None:
        for item in sorted(folder.rglob("*")):
            if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES:
                add(item)

    for raw in paths:
        text = str(raw)
        if _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise ConfigError(f"{text}: the pattern matches nothing")
            for match in map(Path, matches):
                # A pattern such as photos/* also matches notes: keep only images from it.
                if match.is_dir():
                    add_tree(match)
                elif match.suffix.lower() in IMAGE_SUFFIXES:
                    add(match)
            continue
        path = Path(text)
        if path.is_dir():
            add_tree(path)
        elif path.is_file():
            # A file named explicitly is sent whatever its suffix: the server decides.
            add(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return found


@dataclass(frozen=True)
class PredictOptions:
    """What to ask the server for each file, and how."""

    url: str
    model: str | None = None
    top_k: int | None = None
    timeout_s: float | None = None
    concurrency: int = 4
    api_key: str | None = None
    retries: int = 3
    params: dict[str, str] = field(default_factory=dict)  # the model's own options


@dataclass
class Summary:
    """What a run did."""

    total: int
    skipped: int = 0
    succeeded: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def failed(self) -> int:
        """How many files got an error."""
        return sum(self.failures.values())

    def line(self) -> str:
        """One human line: done, failed by reason, skipped, time."""
        text = f"predict: {self.succeeded} done, {self.failed} failed"
        if self.failures:
            reasons = ", ".join(f"{code} {n}" for code, n in self.failures.most_common())
            text += f" ({reasons})"
        if self.skipped:
            text += f", {self.skipped} skipped (already done, --resume)"
        sent = self.succeeded + self.failed
        rate = sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return text + f"; {self.elapsed_s:.1f} s, {rate:.1f} images/s"


def _error(path: Path, code: str, message: str) -> Record:
    return {"path": str(path), "filename": path.name, "error": {"code": code, "message": message}}


async def predict_one(client: AsyncClient, path: Path, opts: PredictOptions) -> Record:
    """One file's record: its prediction, or an error with the server's code."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _error(path, "read_error", str(exc))
    try:
        result = await client.predict(
            [(path.name, data)],
            model=opts.model,
            top_k=opts.top_k,
            timeout=opts.timeout_s,
            params=opts.params,
        )
    except ApiError as exc:
        return _error(path, exc.code, exc.message)
    except ClientError as exc:
        return _error(path, "connection_error", str(exc))
    if not result.predictions:
        return _error(path, "bad_response", "the server's answer has no predictions")
    pred = result.predictions[0]
    if pred.error is not None:
        return {"path": str(path), "filename": path.name, "error": pred.error}
    record: Record = {
        "path": str(path),
        "filename": path.name,
        "model": result.model,
        "job_id": pred.job_id,
        "result": pred.raw.get("result"),
    }
    if "top_k" in pred.raw:  # classifiers: kept at the top level, as in the API
        record["top_k"] = [
            {"label": t.label, "index": t.index, "score": t.score} for t in pred.top_k
        ]
    record["timings"] = pred.timings
    return record


def check_csv_task(opts: PredictOptions) -> None:
    """CSV holds classification and detection results only: refuse others before sending."""
    try:
        with Client(opts.url, api_key=opts.api_key, retry=RetryPolicy(retries=0)) as vq:
            models = vq.models()
    except ClientError:
        return  # the files' own requests will report what is wrong with the server
    chosen = next((m for m in models if (m.name == opts.model if opts.model else m.default)), None)
    if chosen is not None and chosen.task not in CSV_TASKS:
        raise ConfigError(
            f"CSV output holds {' and '.join(CSV_TASKS)} results; model {chosen.name!r} is "
            f"{chosen.task}: write JSON lines (--out results.jsonl)"
        )


async def _run(
    files: list[Path], opts: PredictOptions, on_record: Callable[[Record], None]
) -> None:
    # The server waits for the result before it answers: give it that long plus a margin.
    http_timeout = (opts.timeout_s or 30.0) + 30.0
    client = AsyncClient(
        opts.url,
        api_key=opts.api_key,
        timeout_s=http_timeout,
        retry=RetryPolicy(retries=opts.retries),
        max_connections=opts.concurrency,
    )
    pending = iter(files)

    async def worker() -> None:
        # Workers share one iterator, so at most ``concurrency`` files are read and in flight.
        for path in pending:
            on_record(await predict_one(client, path, opts))

    async with client:
        await asyncio.gather(*(worker() for _ in range(min(opts.concurrency, len(files)))))


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- images/s" if speed is None else f"{speed:.1f} images/s")


def _progress(stream: TextIO) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(file=stream),
    )


def predict_files(
    files: list[Path], opts: PredictOptions, sink: Sink, progress: TextIO = sys.stderr
) -> Summary:
    """Predict every file, ``opts.concurrency`` at a time, writing each record as it arrives."""
    summary = Summary(total=len(files))
    start = time.monotonic()
    with _progress(progress) as bar:
        task = bar.add_task("predict", total=len(files))

        def on_record(record: Record) -> None:
            sink.write(record)
            error = record.get("error")
            if error:
                summary.failures[str(error.get("code", "error"))] += 1
            else:
                summary.succeeded += 1
            bar.update(task, advance=1, description=f"predict ({summary.failed} failed)")

        try:
            asyncio.run(_run(files, opts, on_record))
        finally:
            summary.elapsed_s = time.monotonic() - start
    return summary


def run_command(
    paths: list[str], opts: PredictOptions, out: str | None, resume: bool, stream: TextIO
) -> int:
    """The whole command: collect, skip what is done, predict, summarise; the exit code."""
    files = collect_images(paths)
    if not files:
        looked = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ConfigError(f"no images found (looked for {looked} files)")
    if resume and out is None:
        raise ConfigError("--resume needs --out: it skips the files already done there")
    skipped = 0
    if resume and out is not None:
        done = done_paths(Path(out))
        kept = [f for f in files if str(f.resolve()) not in done]
        skipped, files = len(files) - len(kept), kept
    if out is not None and is_csv(Path(out)):
        check_csv_task(opts)
    with open_sink(out, append=resume, stdout=stream) as sink:
        summary = predict_files(files, opts, sink) if files else Summary(total=0)
    summary.skipped = skipped
    print(summary.line(), file=sys.stderr)
    return 1 if summary.failed else 0
