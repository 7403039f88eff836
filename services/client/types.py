"""What the client returns: small dataclasses over the API's JSON, with the raw dict kept."""

from __future__ import annotations

import base64
import struct
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
class Classification:
    """A classifier's result: labels, best first."""

    top_k: list[Label]


@dataclass(frozen=True)
class Detection:
    """One detected object: box ``[x1, y1, x2, y2]`` in the image's pixels (as shown)."""

    box: tuple[float, float, float, float]
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Detections:
    """A detector's result, best first."""

    detections: list[Detection]


@dataclass(frozen=True)
class Embedding:
    """An embedder's result; ``base64-f16`` answers are decoded to floats here."""

    vector: list[float]
    dim: int
    normalized: bool


@dataclass(frozen=True)
class SegmentClass:
    """A class present in a segmentation map and the fraction of pixels it covers."""

    index: int
    label: str
    fraction: float


@dataclass(frozen=True)
class Segmentation:
    """A segmenter's result: the class map as PNG bytes or run lengths, and the classes."""

    width: int
    height: int
    classes: list[SegmentClass]
    png: bytes | None = None
    rle: tuple[list[int], list[int]] | None = None  # (values, counts), row-major

    def class_map(self) -> list[list[int]]:
        """The class index of every pixel, rows of ``width`` (decodes the PNG or the RLE)."""
        if self.png is not None:
            import io

            from PIL import Image

            with Image.open(io.BytesIO(self.png)) as image:
                flat = [int(v) for v in image.get_flattened_data()]  # type: ignore[arg-type]
        else:
            values, counts = self.rle or ([], [])
            flat = [v for v, n in zip(values, counts, strict=True) for _ in range(n)]
        return [flat[r * self.width : (r + 1) * self.width] for r in range(self.height)]


@dataclass(frozen=True)
class Custom:
    """The result of a model with its own handler: the JSON as it came."""

    data: dict[str, Any]


Result = Classification | Detections | Embedding | Segmentation | Custom


def parse_result(raw: Any) -> Result | None:
    """The typed result of a job's JSON ``result`` (None when there is none)."""
    if not isinstance(raw, dict):
        return None
    if "top_k" in raw:
        return Classification(_labels(raw["top_k"]))
    if "detections" in raw:
        return Detections(
            [
                Detection(
                    tuple(float(v) for v in d["box"]),  # type: ignore[arg-type]
                    str(d["label"]),
                    int(d["index"]),
                    float(d["score"]),
                )
                for d in raw["detections"]
            ]
        )
    if "embedding" in raw:
        vector = raw["embedding"]
        if isinstance(vector, str):  # encoding=base64-f16: little-endian float16
            data = base64.b64decode(vector)
            vector = [float(x) for x in struct.unpack(f"<{len(data) // 2}e", data)]
        return Embedding([float(x) for x in vector], int(raw["dim"]), bool(raw.get("normalized")))
    if "mask" in raw and "classes" in raw:
        mask = raw["mask"]
        classes = [
            SegmentClass(int(c["index"]), str(c["label"]), float(c["fraction"]))
            for c in raw["classes"]
        ]
        if mask.get("format") == "png":
            png = base64.b64decode(mask["data"])
            return Segmentation(int(raw["width"]), int(raw["height"]), classes, png=png)
        rle = ([int(v) for v in mask["values"]], [int(n) for n in mask["counts"]])
        return Segmentation(int(raw["width"]), int(raw["height"]), classes, rle=rle)
    return Custom(dict(raw))


@dataclass(frozen=True)
class Prediction:
    """One file's answer from POST /v1/predict: labels, or an error for that file alone."""

    filename: str
    job_id: str
    top_k: list[Label]
    timings: dict[str, Any]
    error: dict[str, Any] | None = None
    random_weights: bool = False  # the model ran on random weights: labels mean nothing
    result: Result | None = None  # typed per task; None for a failed file
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when this file has a result."""
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
            result=parse_result(raw.get("result")),
            raw=raw,
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
    result: Result | None = None  # typed per task

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
            result=parse_result(raw.get("result")),
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
    params_schema: dict[str, Any]
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
            params_schema=dict(raw.get("params_schema") or {}),
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
