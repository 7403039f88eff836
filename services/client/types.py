"""What the client returns: small dataclasses over the API's JSON, with the raw dict kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Label:
    """One of the top-k labels."""

    label: str
    index: int
    score: float


def _labels(raw: Any) -> list[Label]:
    if not isinstance(raw, list):
        return []
    return [Label(str(x["label"]), int(x["index"]), float(x["score"])) for x in raw]


@dataclass(frozen=True)
class Prediction:
    """One file's answer from POST /v1/predict: labels, or an error for that file alone."""

    filename: str
    job_id: str
    top_k: list[Label]
    timings: dict[str, Any]
    error: dict[str, Any] | None = None
    random_weights: bool = False  # the model ran on random weights: labels mean nothing

    @property
    def ok(self) -> bool:
        """True when this file has labels."""
        return self.error is None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Prediction:
        """Build from one entry of ``predictions``."""
        return cls(
            filename=str(raw.get("filename", "")),
            job_id=str(raw.get("job_id", "")),
            top_k=_labels(raw.get("top_k")),
            timings=dict(raw.get("timings") or {}),
            error=raw.get("error"),
            random_weights=bool(raw.get("random_weights", False)),
        )


@dataclass(frozen=True)
class PredictResult:
    """The whole answer of POST /v1/predict."""

    model: str
    predictions: list[Prediction]


@dataclass(frozen=True)
class JobRef:
    """A queued job as POST /v1/jobs reports it; a refused file has ``error`` and no id."""

    job_id: str
    filename: str
    status_url: str
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the file was queued."""
        return self.error is None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobRef:
        """Build from one entry of ``jobs``."""
        return cls(
            job_id=str(raw.get("job_id", "")),
            filename=str(raw.get("filename", "")),
            status_url=str(raw.get("status_url", "")),
            error=raw.get("error"),
        )


@dataclass(frozen=True)
class Job:
    """GET /v1/jobs/{id}, or one line of a batch's result listing."""

    job_id: str
    status: str
    model: str = ""
    filename: str = ""
    top_k: list[Label] = field(default_factory=list)
    error: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    random_weights: bool = False  # the model ran on random weights: labels mean nothing

    ENDED = frozenset({"succeeded", "failed", "expired", "cancelled"})

    @property
    def ended(self) -> bool:
        """True once the job will not change any more."""
        return self.status in self.ENDED

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Job:
        """Build from the API's job object."""
        result = raw.get("result") or {}
        return cls(
            job_id=str(raw.get("job_id", "")),
            status=str(raw.get("status", "")),
            model=str(raw.get("model", "")),
            filename=str(raw.get("filename", "")),
            top_k=_labels(result.get("top_k")),
            error=raw.get("error"),
            timings=dict(raw.get("timings") or {}),
            random_weights=bool(raw.get("random_weights", False)),
        )


@dataclass(frozen=True)
class BatchStatus:
    """GET /v1/batches/{id}: progress counts."""

    batch_id: str
    model: str
    status: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    pending: int
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def done(self) -> bool:
        """True when no job of the batch is queued or running."""
        return self.pending == 0

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BatchStatus:
        """Build from the API's batch object."""
        return cls(
            batch_id=str(raw["batch_id"]),
            model=str(raw.get("model", "")),
            status=str(raw.get("status", "")),
            total=int(raw.get("total", 0)),
            succeeded=int(raw.get("succeeded", 0)),
            failed=int(raw.get("failed", 0)),
            cancelled=int(raw.get("cancelled", 0)),
            pending=int(raw.get("pending", 0)),
            raw=raw,
        )


@dataclass(frozen=True)
class ModelInfo:
    """One entry of GET /v1/models."""

    name: str
    task: str
    input_size: int
    default: bool
    queue_depth: int
    live_workers: int
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelInfo:
        """Build from the API's model object."""
        return cls(
            name=str(raw["name"]),
            task=str(raw.get("task", "")),
            input_size=int(raw.get("input_size", 0)),
            default=bool(raw.get("default", False)),
            queue_depth=int(raw.get("queue_depth", 0)),
            live_workers=int(raw.get("live_workers", 0)),
            raw=raw,
        )


@dataclass(frozen=True)
class Refusal:
    """A file the server refused for its own content (the others were accepted)."""

    filename: str
    code: str
    message: str

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Refusal:
        """Build from ``{"filename", "error": {"code", "message"}}``."""
        err = raw.get("error") or {}
        return cls(
            str(raw.get("filename", "")), str(err.get("code", "")), str(err.get("message", ""))
        )


@dataclass(frozen=True)
class BatchUpload:
    """What ``create_batch`` queued: the batch id, how many files it holds, what was refused."""

    batch_id: str
    added: int
    refused: list[Refusal] = field(default_factory=list)
