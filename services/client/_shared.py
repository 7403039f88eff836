"""What the sync and async clients share: building forms, reading errors, retry delays."""

from __future__ import annotations

import email.utils
import mimetypes
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.client.errors import ApiError, ApiTimeout, RetryableError
from services.client.types import Refusal

# A path, or (filename, bytes) for data that is not in a file.
FileInput = str | os.PathLike[str] | tuple[str, bytes]
Parts = list[tuple[str, tuple[str, bytes, str]]]

RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_headers() -> dict[str, str]:
    """A fresh Idempotency-Key for one submitting call, sent again on each of its retries.

    With it the server creates the jobs at most once, so a POST whose answer was lost (a read
    timeout, a dropped connection) is safe to send again.
    """
    return {IDEMPOTENCY_HEADER: uuid.uuid4().hex}


# File name endings of every format the server may accept (compare lower-cased); the server
# decides by content (415 for a format it does not accept).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry 429/503 answers and refused connections."""

    retries: int = 3
    backoff_s: float = 0.5
    max_wait_s: float = 30.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to sleep before retry ``attempt`` (0-based): Retry-After when given."""
        given = parse_retry_after(retry_after)
        wait = given if given is not None else self.backoff_s * (2**attempt)
        return min(max(wait, 0.0), self.max_wait_s)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def file_parts(files: Iterable[FileInput]) -> Parts:
    """Multipart 'file' parts; paths are read now so a retry can send the same bytes."""
    parts: Parts = []
    for item in files:
        if isinstance(item, tuple):
            name, data = item
        else:
            path = Path(item)
            name, data = path.name, path.read_bytes()
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        parts.append(("file", (name, data, mime)))
    if not parts:
        raise ValueError("give at least one file")
    return parts


def form_fields(
    model: str | None,
    top_k: int | None = None,
    timeout: float | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The optional text fields of the upload forms (the model's params as form fields)."""
    fields: dict[str, str] = {}
    for name, value in (params or {}).items():
        fields[name] = str(value).lower() if isinstance(value, bool) else str(value)
    if model:
        fields["model"] = model
    if top_k is not None:
        fields["top_k"] = str(top_k)
    if timeout is not None:
        fields["timeout"] = f"{timeout:g}"
    return fields


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The Authorization header for a key, or none."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def api_error(resp: httpx.Response) -> ApiError:
    """The exception for an error answer, carrying the server's code and message."""
    code, message, details = f"http_{resp.status_code}", resp.text[:500], {}
    try:
        body = resp.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
        code = str(err.get("code", code))
        message = str(err.get("message", message))
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    cls: type[ApiError] = ApiError
    if resp.status_code in RETRY_STATUSES:
        cls = RetryableError
    elif resp.status_code == 504:
        cls = ApiTimeout
    return cls(resp.status_code, code, message, details, retry_after)


def json_body(resp: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer; ApiError for anything else."""
    if resp.status_code >= 400:
        raise api_error(resp)
    try:
        body = resp.json()
    except ValueError as exc:
        raise ApiError(resp.status_code, "bad_response", "the answer is not JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(resp.status_code, "bad_response", "the answer is not a JSON object")
    return body


def chunks(
    items: Sequence[FileInput], size: int, max_bytes: int = 32 * 1024 * 1024
) -> list[Sequence[FileInput]]:
    """``items`` cut into runs of at most ``size`` files and about ``max_bytes`` each.

    The byte bound keeps each request under the server's VISIONQ_MAX_UPLOAD_BYTES (50 MiB
    by default); a single larger file still goes alone, and the server answers 413.
    """
    out: list[Sequence[FileInput]] = []
    start, held = 0, 0
    for i, item in enumerate(items):
        n = len(item[1]) if isinstance(item, tuple) else os.path.getsize(item)
        if i > start and (i - start >= size or held + n > max_bytes):
            out.append(items[start:i])
            start, held = i, 0
        held += n
    if start < len(items):
        out.append(items[start:])
    return out


def refusals(body: dict[str, Any]) -> list[Refusal]:
    """The ``refused`` entries of a batch answer."""
    raw = body.get("refused")
    return [Refusal.from_json(r) for r in raw] if isinstance(raw, list) else []


def chunk_refused(exc: ApiError) -> list[Refusal] | None:
    """The refusals when ``exc`` says every file of the request was refused, else None.

    The server answers such a request with the first file's error, naming it in
    ``filename`` and listing every refusal in ``refused`` when there were several.
    """
    if "filename" not in exc.details:
        return None  # not about the files' content: the request itself failed
    listed = refusals(exc.details)
    return listed or [Refusal(str(exc.details["filename"]), exc.code, exc.message)]
