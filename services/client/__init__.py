"""A small typed client for the visionq HTTP API, blocking (``Client``) and asyncio
(``AsyncClient``), with retries on 429/503 that honour Retry-After.

    from services.client import Client

    with Client("http://127.0.0.1:8000") as vq:
        result = vq.predict(["cat.jpg"], top_k=3)
"""

from __future__ import annotations

from services.client._shared import DEFAULT_URL, IMAGE_SUFFIXES, FileInput, RetryPolicy
from services.client.aio import AsyncClient
from services.client.errors import (
    ApiError,
    ApiTimeout,
    ClientError,
    RetryableError,
    TransportError,
)
from services.client.sync import Client
from services.client.types import (
    BatchStatus,
    BatchUpload,
    Classification,
    Custom,
    Detection,
    Detections,
    Embedding,
    Job,
    JobRef,
    Label,
    ModelInfo,
    Prediction,
    PredictResult,
    Refusal,
    Result,
    Segmentation,
    SegmentClass,
    parse_result,
)

__all__ = [
    "DEFAULT_URL",
    "IMAGE_SUFFIXES",
    "ApiError",
    "ApiTimeout",
    "AsyncClient",
    "BatchStatus",
    "BatchUpload",
    "Classification",
    "Client",
    "ClientError",
    "Custom",
    "Detection",
    "Detections",
    "Embedding",
    "FileInput",
    "Job",
    "JobRef",
    "Label",
    "ModelInfo",
    "PredictResult",
    "Prediction",
    "Refusal",
    "Result",
    "RetryPolicy",
    "RetryableError",
    "SegmentClass",
    "Segmentation",
    "TransportError",
    "parse_result",
]
