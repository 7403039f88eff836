"""Process logging: plain text or one JSON object per line (``VISIONQ_LOG_FORMAT``).

Every visionq process (API, uvicorn, Celery, worker) logs through the root logger, so one
handler decides the format for all of them. Records carry ``job_id`` and ``batch_id`` when
the code that logs runs inside ``log_context`` (the worker's batch threads, a task) or
passes them in ``extra``; JSON lines then have them as fields, text lines as a suffix.

Per-request (uvicorn's access log) and per-task (Celery's "received" / "succeeded") INFO
lines are off unless ``VISIONQ_LOG_LEVEL=DEBUG``: at a few requests a second they bury the
lines an operator must see, such as the random-weights warning.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(ids)s"

# Loggers that write one INFO line per HTTP request or per Celery task.
CHATTY = ("uvicorn.access", "celery.worker.strategy", "celery.app.trace")

_job_id: ContextVar[str | None] = ContextVar("visionq_job_id", default=None)
_batch_id: ContextVar[str | None] = ContextVar("visionq_batch_id", default=None)


@contextmanager
def log_context(*, job_id: str | None = None, batch_id: str | None = None) -> Iterator[None]:
    """Tag every record logged in this block (this thread or task) with the ids given."""
    tokens = []
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    if batch_id is not None:
        tokens.append((_batch_id, _batch_id.set(batch_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``job_id`` / ``batch_id`` from the context (unless ``extra`` gave them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always True: it only annotates."""
        for name, var in (("job_id", _job_id), ("batch_id", _batch_id)):
            if getattr(record, name, None) is None:
                value = var.get()
                if value is not None:
                    setattr(record, name, value)
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{n}={getattr(record, n)}" for n in ("job_id", "batch_id") if hasattr(record, n)]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "{asctime}{levelname}{name}{process}{threadName}{message}",
        style="{",
        # uvicorn repeats each message with terminal colour codes in this extra field.
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


_HANDLER_NAME = "visionq"


def configure(level: str, fmt: Literal["text", "json"]) -> None:
    """Send every logger's records to stderr in ``fmt``; again in the same process: no-op."""
    root = logging.getLogger()
    if any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_json_formatter() if fmt == "json" else _TextFormatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    # Whatever configured the root before (basicConfig, a library) would print twice.
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn lines in the same format, not raw stderr
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in CHATTY:
        logging.getLogger(name).setLevel(quiet)
    # One INFO line per HTTP call of the CLI client would drown its progress output.
    logging.getLogger("httpx").setLevel(logging.WARNING)
