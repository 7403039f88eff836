"""Response bodies of the HTTP API as pydantic models: the OpenAPI schema comes from these.

Each route names its success model and, per status code, the error body it may answer with
(``error_responses``). The models are open (``extra="allow"``) where a field may be added
without breaking a client: a generated client keeps unknown fields in
``additional_properties`` instead of failing. ``tests/security/test_schemathesis.py`` checks
the live answers against this schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "succeeded", "failed", "expired", "cancelled"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorInfo(_Open):
    """What went wrong: a stable code, a message, and details where they apply."""

    code: str = Field(description="stable machine-readable code, e.g. queue_full")
    message: str
    job_ids: list[str] | None = Field(None, description="504 timeout, 400 invalid_image")
    filename: str | None = Field(None, description="the upload the error is about")
    status: str | None = Field(None, description="409: the job's or batch's status")
    retry_after_s: int | None = Field(None, description="429 rate_limited")


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message", ...}}``."""

    error: ErrorInfo


class TopKEntry(BaseModel):
    """One class of a classifier's answer."""

    label: str
    index: int = Field(description="class index in the model's output")
    score: float = Field(description="softmax probability, 0..1")


class Timings(_Open):
    """Where a job's time went, in milliseconds; fields appear once known."""

    queued_ms: float | None = Field(None, description="submit to claim by a worker")
    batch_size: int | None = Field(None, description="images in the job's forward pass")
    decode_ms: float | None = None
    inference_ms: float | None = Field(None, description="the batch's forward pass")
    total_ms: float | None = Field(None, description="submit to result stored")
    deliveries: int | None = Field(None, description="times a worker claimed the job")


class RefusedFile(BaseModel):
    """A file part refused for its own content; the request's other files went ahead."""

    filename: str
    error: ErrorInfo


class Prediction(_Open):
    """One file part's outcome in POST /v1/predict: ``result``, or ``error`` (a refused part
    has no ``job_id``: it never became a job)."""

    filename: str
    job_id: str | None = None
    result: dict[str, Any] | None = Field(
        None, description="the model's answer; its fields depend on the model's task"
    )
    top_k: list[TopKEntry] | None = Field(None, description="classifiers: the best classes")
    error: ErrorInfo | None = None
    timings: Timings | None = None


class PredictResponse(BaseModel):
    """POST /v1/predict: one prediction per file, in upload order."""

    model: str
    predictions: list[Prediction]


class JobRef(BaseModel):
    """A queued job and where to poll it; or, for a refused file part, only its error."""

    filename: str
    job_id: str | None = None
    status_url: str | None = None
    error: ErrorInfo | None = None


class JobsAccepted(BaseModel):
    """POST /v1/jobs: one job per file, in upload order."""

    jobs: list[JobRef]


class JobStatus(_Open):
    """GET /v1/jobs/{job_id}."""

    job_id: str
    model: str
    status: JobState
    filename: str | None = None
    result: dict[str, Any] | None = Field(None, description="once succeeded")
    top_k: list[TopKEntry] | None = None
    error: ErrorInfo | None = Field(None, description="once failed, expired or cancelled")
    timings: Timings | None = None


class JobCancelled(BaseModel):
    """DELETE /v1/jobs/{job_id}."""

    job_id: str
    status: Literal["cancelled"]


class ModelInfo(_Open):
    """One served model."""

    name: str
    task: str = Field(description="classification, detection, ...")
    kind: str
    input_size: int = Field(description="pixels of the square the model sees")
    default: bool = Field(description="used when a request names no model")
    queue: str
    queue_depth: int = Field(description="jobs waiting, both lanes")
    queue_depth_by_lane: dict[str, int]
    live_workers: int
    devices: list[str]
    weights: dict[str, Any] = Field(description="source, location, random")
    warning: str | None = None


class ModelList(BaseModel):
    """GET /v1/models."""

    models: list[ModelInfo]


class BatchCreated(BaseModel):
    """POST /v1/batches."""

    batch_id: str
    model: str
    added: int
    total: int
    status_url: str
    refused: list[RefusedFile] = Field(default_factory=list, description="parts not queued")


class BatchFilesAdded(BaseModel):
    """POST /v1/batches/{batch_id}/files."""

    batch_id: str
    added: int
    total: int
    refused: list[RefusedFile] = Field(default_factory=list, description="parts not queued")


class BatchStatus(_Open):
    """GET /v1/batches/{batch_id}: progress counted from the jobs themselves."""

    batch_id: str
    model: str
    created: float = Field(description="Unix time")
    status: Literal["running", "done", "cancelled"]
    total: int
    succeeded: int
    failed: int = Field(description="failed or expired")
    cancelled: int
    pending: int = Field(description="queued or running")
    queued: int
    running: int
    results_url: str


class BatchCancelled(BatchStatus):
    """DELETE /v1/batches/{batch_id}: the progress after cancelling."""

    cancelled_now: int = Field(description="jobs this call cancelled")


class Health(BaseModel):
    """GET /healthz."""

    status: Literal["ok"]
    run_token: str | None = Field(None, description="set by visionq up: which run started it")


class Ready(_Open):
    """GET /readyz, 200."""

    status: Literal["ready"]


class NotReady(_Open):
    """GET /readyz, 503."""

    status: Literal["not_ready"]
    reason: str


# Why each status may come back; the codes are ErrorInfo.code values.
_WHY = {
    400: "invalid_image: an image that cannot be decoded",
    401: "unauthorized: no valid API key (when VISIONQ_API_KEYS is set)",
    404: "model_not_found, job_not_found, batch_not_found; not_found for a moved /metrics",
    409: "job_not_cancellable: the job or batch can no longer change",
    413: "payload_too_large: body, file count or pixel count over a limit",
    415: "unsupported_media_type: not multipart, or a file in no accepted image format",
    422: "validation_error: a field is missing or out of range",
    429: "queue_full or rate_limited; retry after Retry-After seconds",
    503: "broker_unavailable: Redis does not answer",
    504: "timeout: not done in time; the job ids are in the error",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def error_responses(*statuses: int, json_route: bool = True) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: the error body for each of ``statuses``.

    ``json_route=False`` for a route whose success is not JSON (its response_class would
    otherwise be taken as the errors' media type too); the body is then referenced by name.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": _WHY[status]}
        if json_route:
            entry["model"] = ErrorBody
        else:
            ref = {"$ref": "#/components/schemas/ErrorBody"}
            entry["content"] = {"application/json": {"schema": ref}}
        if status == 429:
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


# Every /v1 route: the key check (401), bad parameters (422), the rate limit (429), Redis (503).
V1_ERRORS = (401, 422, 429, 503)
# The upload routes add what read_form and submit refuse.
UPLOAD_ERRORS = (*V1_ERRORS, 400, 404, 413, 415)
