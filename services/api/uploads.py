"""Read and check a multipart upload: files sniffed by content, fields range-checked.

Fields other than ``file``, ``model`` and ``timeout`` are the model handler's params,
validated by its pydantic ``Params`` (an unknown or invalid field is 422 naming it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from fastapi import Request, UploadFile
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException

from models.handlers.params import (
    ClassificationParams,
    DetectionParams,
    EmbeddingParams,
    SegmentationParams,
)
from models.handlers.registry import params_class
from models.preprocess import check_image
from models.specs import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Preprocess
from services.api.metrics import API_METRICS
from services.common.errors import (
    ModelNotFound,
    PayloadTooLarge,
    RequestInvalid,
    UnsupportedMediaType,
    VisionqError,
)
from services.common.settings import ApiSettings

BUILTIN_PARAMS: tuple[type[BaseModel], ...] = (
    ClassificationParams,
    DetectionParams,
    EmbeddingParams,
    SegmentationParams,
)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Upload:
    """One checked image."""

    filename: str
    data: bytes
    format: str


@dataclass(frozen=True)
class Refusal:
    """A file part refused by its content alone: its position, name and the error."""

    index: int
    filename: str
    error: VisionqError

    def to_api(self) -> dict[str, Any]:
        """``{"filename", "error": {"code", "message"}}``: the per-file entry of an answer."""
        return {
            "filename": self.filename,
            "error": {"code": self.error.code, "message": self.error.message},
        }


@dataclass(frozen=True)
class SubmitForm:
    """The checked form of POST /v1/predict and /v1/jobs.

    ``files`` are the accepted images; ``refused`` the parts refused for their own content
    (invalid, unsupported, too many pixels). Both keep upload order; ``order()`` merges them.
    """

    model: str
    params: dict[str, Any]  # the handler's Params, validated, JSON-ready
    timeout: float | None
    files: list[Upload]
    refused: list[Refusal] = field(default_factory=list)

    def order(self) -> list[Upload | Refusal]:
        """Accepted and refused parts merged back into upload order."""
        refused = {r.index: r for r in self.refused}
        accepted = iter(self.files)
        total = len(self.files) + len(self.refused)
        return [refused[i] if i in refused else next(accepted) for i in range(total)]

    @property
    def params_json(self) -> str:
        """The params as stored in each job record."""
        return json.dumps(self.params, separators=(",", ":"), sort_keys=True)


_NO_PRE = Preprocess(1, 1, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
_RESERVED = frozenset({"file", "model", "timeout"})


@lru_cache(maxsize=256)
def _params_of(name: str, task: str, handler: str | None) -> type[BaseModel]:
    return params_class(ModelSpec(name, "none", _NO_PRE, task=task, handler=handler))


def _params_type(spec: ModelSpec) -> type[BaseModel]:
    # Keyed on what decides the class (a spec itself is unhashable: it holds options).
    return _params_of(spec.name, spec.task, spec.handler)


def validate_params(spec: ModelSpec, raw: dict[str, str]) -> dict[str, Any]:
    """The handler's params from form fields; RequestInvalid names the first bad field."""
    try:
        params = _params_type(spec).model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "params"
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(_params_type(spec).model_fields)) or "none"
            message = f"{field!r} is not a parameter of model {spec.name!r} (allowed: {allowed})"
        else:
            message = f"{field!r}: {first['msg']}"
        raise RequestInvalid(message, field=field) from exc
    dumped: dict[str, Any] = params.model_dump(mode="json")
    return dumped


class UploadFields(BaseModel):
    """The multipart form of POST /v1/jobs and /v1/batches, less the handler's params.

    read_form parses the body itself (to cap files and bytes before anything is spooled),
    so FastAPI cannot infer the form; the OpenAPI request body is generated from this model
    and the handlers' Params models.
    """

    file: list[UploadFile] = Field(
        description=(
            "one or more images, recognised by content, not name: JPEG, PNG, WebP, GIF, BMP, "
            "TIFF, AVIF, HEIC (VISIONQ_ACCEPTED_FORMATS may narrow the list)"
        )
    )
    model: str | None = Field(None, description="a served model; default: the default model")


class PredictFields(UploadFields):
    """The form of POST /v1/predict: the upload form and how long to wait."""

    timeout: float | None = Field(
        None, gt=0, description="seconds to wait (at most VISIONQ_MAX_TIMEOUT_S), then 504"
    )


def _form_schema(node: Any) -> Any:
    """A pydantic JSON schema as a multipart form schema: no titles, no nulls, binary files."""
    if isinstance(node, list):
        return [_form_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    options = node.get("anyOf")
    if options and {"type": "null"} in options and len(options) == 2:
        # A form field is absent or a string: "null" cannot be sent.
        (kept,) = [o for o in options if o != {"type": "null"}]
        node = {**{k: v for k, v in node.items() if k != "anyOf"}, **kept}
        if node.get("default", 0) is None:
            del node["default"]
    out = {k: _form_schema(v) for k, v in node.items() if k != "title"}
    if out.get("contentMediaType") == "application/octet-stream":
        out["format"] = "binary"  # OpenAPI 3.0's spelling, which more tools read
    return out


def multipart_form_doc(with_timeout: bool) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of the upload form, generated from models: the form's own
    fields from UploadFields / PredictFields, then the built-in handlers' params (which
    apply depends on the model: GET /v1/models)."""
    fields = PredictFields if with_timeout else UploadFields
    schema = _form_schema(fields.model_json_schema())
    schema.pop("description", None)  # the class docstring speaks to developers, not users
    properties = schema["properties"]
    for params in BUILTIN_PARAMS:
        for name, prop in _form_schema(params.model_json_schema())["properties"].items():
            # No "default": a generated client would send it to every model, and a model
            # refuses another task's params (422). The handler applies its own default.
            if "default" in prop:
                default = prop.pop("default")
                prop["description"] = f"{prop.get('description', name)} (default {default})"
            properties.setdefault(name, prop)
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


def model_not_found(model: str, served: list[str]) -> ModelNotFound:
    """404 ``model_not_found`` naming the model (cut at 100 characters: the form field may
    be any size, and the message is echoed) and the models served."""
    named = repr(model) if len(model) <= 100 else f"{model[:100]!r}... ({len(model)} chars)"
    return ModelNotFound(f"model {named} is not served; available: {', '.join(served)}")


async def read_form(
    request: Request,
    settings: ApiSettings,
    registry: dict[str, ModelSpec],
    model: str | None = None,
) -> SubmitForm:
    """Parse, limit and validate the form; raise a VisionqError for anything wrong.

    ``model`` overrides the form's (a batch keeps the model it was created with). A refusal
    counts in ``visionq_jobs_rejected_total`` by its error code (400, 413, 415, 422).
    """
    label = [model or ""]  # the form's model once it is parsed, to label a refusal
    try:
        return await _read_form(request, settings, registry, model, label)
    except VisionqError as exc:
        API_METRICS.count_rejected(label[0], exc.code)
        raise


async def _read_form(
    request: Request,
    settings: ApiSettings,
    registry: dict[str, ModelSpec],
    model: str | None,
    label: list[str],
) -> SubmitForm:
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
        label[0] = model or _text(form, "model") or settings.default_model
        return await _check(form, settings, registry, model)
    finally:
        await form.close()


async def _check(
    form: FormData, settings: ApiSettings, registry: dict[str, ModelSpec], forced: str | None
) -> SubmitForm:
    model = forced or _text(form, "model") or settings.default_model
    timeout = _number(form, "timeout", float, default=None, low=0.001, high=settings.max_timeout_s)
    parts = form.getlist("file")
    if not parts:
        raise RequestInvalid("no 'file' part: upload at least one image")
    uploads: list[Upload] = []
    refused: list[Refusal] = []
    for index, part in enumerate(parts):
        if not isinstance(part, StarletteUpload):
            raise RequestInvalid("'file' must be a file part, not a text field")
        name = safe_filename(part.filename, index)
        data = await part.read()
        try:
            info = check_image(
                data, max_pixels=settings.max_image_pixels, formats=settings.accepted_formats
            )
        except VisionqError as exc:
            # One bad file never fails the good ones sent with it: it gets its own entry.
            exc.message = f"{name}: {exc.message}"
            exc.details["filename"] = name
            refused.append(Refusal(index, name, exc))
            continue
        uploads.append(Upload(name, data, info.format))
    if not uploads:
        # Nothing to run: the request fails with the first file's own status and code.
        first = refused[0].error
        if len(refused) > 1:
            first.details["refused"] = [r.to_api() for r in refused]
        raise first
    if model not in settings.models or model not in registry:
        raise model_not_found(model, settings.models)
    raw: dict[str, str] = {}
    for key in form:
        value = _text(form, key) if key not in _RESERVED else None
        if value is not None:  # a blank field means the default
            raw[key] = value
    params = validate_params(registry[model], raw)
    return SubmitForm(model=model, params=params, timeout=timeout, files=uploads, refused=refused)


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
