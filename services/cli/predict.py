"""``visionq predict``: send image files to the API, stream one result per file to JSONL or CSV.

Results are written and flushed as they arrive, so an interrupted run keeps what it has and
``--resume`` sends only the files that have no successful result in the output yet.
"""

from __future__ import annotations

import asyncio
import glob
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
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

from services.cli.predict_output import CSV_TASKS, Sink, is_csv, open_sink, prepare_resume
from services.cli.predict_summary import Summary, resume_command
from services.client import (
    IMAGE_SUFFIXES,
    ApiError,
    AsyncClient,
    Client,
    ClientError,
    RetryPolicy,
)
from services.common.errors import ConfigError

_GLOB_CHARS = frozenset("*?[")

Record = dict[str, Any]


def collect_images(
    paths: Iterable[str | Path], on_skip: Callable[[Path], None] | None = None
) -> list[Path]:
    """Files as named, images under folders (recursive) and glob matches; no repeats.

    ``on_skip`` is called with each file a folder or pattern held that is not an image.
    """
    found: list[Path] = []
    seen: set[Path] = set()

    def skip(path: Path) -> None:
        if on_skip is not None:
            on_skip(path)

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    def add_tree(folder: Path) -> None:
        for item in sorted(folder.rglob("*")):
            if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES:
                add(item)
            elif item.is_file():
                skip(item)

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
                else:
                    skip(match)
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
    retry_failed: bool = False
    params: dict[str, str] = field(default_factory=dict)  # the model's own options


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
        # Refused connections (after the retries) mean the API is gone; other transport
        # errors (a read timeout, a reset) concern this request only.
        gone = isinstance(exc.__cause__, httpx.ConnectError)
        return _error(path, "connection_error" if gone else "transport_error", str(exc))
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
    if pred.random_weights:
        record["random_weights"] = True
    return record


class Unreachable(Exception):
    """The API stopped answering: the run stops instead of failing every file slowly."""


def check_api(opts: PredictOptions, csv: bool) -> None:
    """Ask the API once, before any upload, what it serves: ConfigError when the URL is no
    visionq API, the key is refused, the model is not served or CSV cannot hold its task
    (each of these would otherwise fail every file, one request at a time)."""
    try:
        with Client(opts.url, api_key=opts.api_key, retry=RetryPolicy(retries=0)) as vq:
            models = vq.models()
    except ApiError as exc:
        raise ConfigError(
            f"{opts.url} did not answer GET /v1/models as a visionq API does: {exc}"
        ) from exc
    except ClientError:
        return  # no answer now: the files' own requests (with retries) report it
    if opts.model and opts.model not in {m.name for m in models}:
        served = ", ".join(sorted(m.name for m in models)) or "none"
        raise ConfigError(f"model {opts.model!r} is not served at {opts.url}; served: {served}")
    chosen = next((m for m in models if (m.name == opts.model if opts.model else m.default)), None)
    if csv and chosen is not None and chosen.task not in CSV_TASKS:
        raise ConfigError(
            f"CSV output holds {' and '.join(CSV_TASKS)} results; model {chosen.name!r} is "
            f"{chosen.task}: write JSON lines (--out results.jsonl)"
        )


# Errors about the request itself (its params, key or model), not about one file: every
# other file would get the same answer, so the run stops at the first one.
REQUEST_ERRORS = frozenset({"validation_error", "model_not_found", "unauthorized"})


class RequestRefused(Exception):
    """The API refused the request itself (params, key, model): the run stops."""


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
    lost: list[str] = []
    refused: list[str] = []

    async def worker() -> None:
        # Workers share one iterator, so at most ``concurrency`` files are read and in flight.
        for path in pending:
            if lost or refused:
                return
            record = await predict_one(client, path, opts)
            error = record.get("error") or {}
            if error.get("code") == "connection_error":
                # Retries are spent: the API is gone. Leave the rest for --resume.
                lost.append(str(error.get("message", "")))
                return
            if error.get("code") in REQUEST_ERRORS:
                refused.append(f"{error.get('code')}: {error.get('message', '')}")
                return
            on_record(record)

    async with client:
        await asyncio.gather(*(worker() for _ in range(min(opts.concurrency, len(files)))))
    if lost:
        raise Unreachable(lost[0])
    if refused:
        raise RequestRefused(refused[0])


class _Rate(ProgressColumn):
    # Answered files over the time since the start, the figure the summary prints too
    # (rich's own speed is a recent-window estimate, so the two used to disagree).
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        if not elapsed or not task.completed:
            return Text("-- images/s")
        return Text(f"{task.completed / elapsed:.1f} images/s")


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
    files: list[Path],
    opts: PredictOptions,
    sink: Sink,
    progress: TextIO = sys.stderr,
    summary: Summary | None = None,
) -> Summary:
    """Predict every file, ``opts.concurrency`` at a time, writing each record as it arrives.

    ``summary`` (a new one when None) is updated as answers come, so a caller that sees
    KeyboardInterrupt or Unreachable still has the counts so far.
    """
    summary = summary or Summary(total=len(files))
    with _progress(progress) as bar:
        task = bar.add_task("predict", total=len(files))

        def on_record(record: Record) -> None:
            sink.write(record)
            summary.add(str(record.get("path", "")), record.get("error"))
            bar.update(task, advance=1, description=f"predict ({summary.failed} failed)")
            summary.elapsed_s = bar.tasks[0].elapsed or 0.0

        try:
            asyncio.run(_run(files, opts, on_record))
        finally:
            bar.stop_task(task)  # freezes the clock: the bar's last rate is the summary's
            summary.elapsed_s = bar.tasks[0].elapsed or summary.elapsed_s
            summary.not_sent = len(files) - summary.succeeded - summary.failed
    return summary


def check_reachable(url: str, api_key: str | None) -> None:
    """ConfigError naming the URL and the reason when nothing answers there (one try)."""
    try:
        # Any HTTP answer will do: this only asks whether something listens there.
        httpx.get(url.rstrip("/") + "/healthz", timeout=5.0)
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"cannot reach the API at {url}: {type(exc).__name__}: {exc or 'no answer'}; "
            "is `visionq up` running? (--url picks another address)"
        ) from exc


def run_command(
    paths: list[str],
    opts: PredictOptions,
    out: str | None,
    resume: bool,
    stream: TextIO,
    argv: Sequence[str] = (),
) -> int:
    """The whole command: collect, skip what is done, predict, summarise; the exit code.

    0 when every file has a result, 1 when some failed or were not sent, 130 on Ctrl-C
    (after the summary so far and the command that resumes).
    """
    non_images: list[Path] = []
    files = collect_images(paths, non_images.append)
    if not files:
        looked = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ConfigError(f"no images found (looked for {looked} files)")
    if resume and out is None:
        raise ConfigError("--resume needs --out: it skips the files already done there")
    skipped = 0
    if resume and out is not None:
        done = prepare_resume(Path(out), opts.retry_failed)
        kept = [f for f in files if str(f.resolve()) not in done]
        skipped, files = len(files) - len(kept), kept
    if files:
        check_reachable(opts.url, opts.api_key)
    if files:
        check_api(opts, csv=out is not None and is_csv(Path(out)))
    summary = Summary(total=len(files), skipped=skipped, non_images=len(non_images))
    code = 0
    lost: str | None = None
    with open_sink(out, append=resume, stdout=stream) as sink:
        try:
            if files:
                predict_files(files, opts, sink, summary=summary)
        except KeyboardInterrupt:
            code = 130
        except Unreachable as exc:
            lost = str(exc)
        except RequestRefused as exc:
            print(summary.line(), file=sys.stderr)
            raise ConfigError(
                f"the API refused the request itself ({exc}); nothing else sent"
            ) from exc
    print(summary.line(), file=sys.stderr)
    for line in summary.failed_lines(out):
        print(line, file=sys.stderr)
    if lost is not None:
        print(f"the API at {opts.url} stopped answering: {lost}", file=sys.stderr)
    if code == 130 or lost is not None:
        if out is None:
            print("interrupted; add --out FILE to be able to resume", file=sys.stderr)
        else:
            print(f"interrupted; to continue: {resume_command(argv)}", file=sys.stderr)
        return code or 1
    return 1 if summary.failed else 0
