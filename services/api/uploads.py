"""Read and check a multipart upload: files sniffed by content, fields range-checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from models.preprocess import check_image
from services.api.metrics import API_METRICS
from services.common.errors import (
    PayloadTooLarge,
    RequestInvalid,
    UnsupportedMediaType,
    VisionqError,
)
from services.common.settings import ApiSettings

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Upload:
    """One checked image."""

    filename: str
    data: bytes
    format: str


@dataclass(frozen=True)
class SubmitForm:
    """The checked form of POST /v1/predict and /v1/jobs."""

    model: str
    top_k: int
    timeout: float | None
    files: list[Upload]


def multipart_form_doc(with_timeout: bool) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of the upload form (parsed by hand, so FastAPI can't infer it)."""
    properties: dict[str, Any] = {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "model": {"type": "string"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 1000},
    }
    if with_timeout:
        properties["timeout"] = {"type": "number", "exclusiveMinimum": 0}
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }


def safe_filename(name: str | None, index: int) -> str:
    """The client's file name with folders and control characters removed."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = _UNSAFE.sub("", base).strip()[:200]
    return base or f"file{index}"


async def read_form(request: Request, settings: ApiSettings) -> SubmitForm:
    """Parse, limit and validate the form; raise a VisionqError for anything wrong.

    A refusal counts in ``visionq_jobs_rejected_total`` by its error code (400, 413, 415).
    """
    model = [""]  # the form's model once it is parsed, to label a refusal
    try:
        return await _read_form(request, settings, model)
    except VisionqError as exc:
        API_METRICS.count_rejected(model[0], exc.code)
        raise


async def _read_form(request: Request, settings: ApiSettings, model: list[str]) -> SubmitForm:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "send multipart/form-data with one or more 'file' parts", received=content_type[:100]
        )
    try:
        form = await request.form(max_files=settings.max_files_per_request, max_fields=32)
    except HTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise PayloadTooLarge(
                f"more than VISIONQ_MAX_FILES_PER_REQUEST={settings.max_files_per_request} files"
            ) from exc
        raise RequestInvalid(f"malformed multipart body: {exc.detail}") from exc
    try:
        model[0] = _text(form, "model") or settings.default_model
        return await _check(form, settings)
    finally:
        await form.close()


async def _check(form: FormData, settings: ApiSettings) -> SubmitForm:
    model = _text(form, "model") or settings.default_model
    top_k = _number(form, "top_k", int, default=5, low=1, high=1000) or 5
    timeout = _number(form, "timeout", float, default=None, low=0.001, high=settings.max_timeout_s)
    parts = form.getlist("file")
    if not parts:
        raise RequestInvalid("no 'file' part: upload at least one image")
    uploads: list[Upload] = []
    for index, part in enumerate(parts):
        if not isinstance(part, UploadFile):
            raise RequestInvalid("'file' must be a file part, not a text field")
        name = safe_filename(part.filename, index)
        data = await part.read()
        try:
            info = check_image(
                data, max_pixels=settings.max_image_pixels, formats=settings.accepted_formats
            )
        except VisionqError as exc:
            exc.message = f"{name}: {exc.message}"
            exc.details["filename"] = name
            raise
        uploads.append(Upload(name, data, info.format))
    return SubmitForm(model=model, top_k=top_k, timeout=timeout, files=uploads)


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestInvalid(f"{name!r} must be a text field")
    return value.strip() or None


def _number(
    form: FormData, name: str, kind: type[_N], default: _N | None, low: _N, high: _N
) -> _N | None:
    raw = _text(form, name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError as exc:
        raise RequestInvalid(f"{name!r} must be a {kind.__name__}, got {raw[:20]!r}") from exc
    if not low <= value <= high:
        raise RequestInvalid(f"{name!r} must be between {low} and {high}, got {value}")
    return value
