"""Errors of visionq.

Hierarchy::

    VisionqError                 base; carries an HTTP status and an error code
    ├── ConfigError              a bad setting or models file; stops start-up
    ├── InvalidImage             400 invalid_image
    ├── Unauthorized             401 unauthorized
    ├── ModelNotFound            404 model_not_found
    ├── JobNotFound              404 job_not_found
    ├── JobConflict              409 job_not_cancellable
    ├── IdempotencyConflict      409 idempotency_conflict
    ├── PayloadTooLarge          413 payload_too_large
    ├── UnsupportedMediaType     415 unsupported_media_type
    ├── RequestInvalid           422 validation_error
    ├── QueueFull                429 queue_full (Retry-After)
    ├── RateLimited              429 rate_limited (Retry-After)
    ├── BrokerUnavailable        503 broker_unavailable
    ├── StorageFull              503 storage_full (Retry-After)
    └── Timeout                  504 timeout
"""

from __future__ import annotations

from typing import Any


class VisionqError(Exception):
    """Base class: an error with an HTTP status and a stable error code."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}


class ConfigError(VisionqError):
    """A setting, models file or weights file is wrong; the process cannot start."""

    code = "config_error"


class InvalidImage(VisionqError):
    """The upload is an image format we accept but cannot be decoded."""

    status = 400
    code = "invalid_image"


class Unauthorized(VisionqError):
    """No valid API key."""

    status = 401
    code = "unauthorized"


class ModelNotFound(VisionqError):
    """The model is not served here."""

    status = 404
    code = "model_not_found"


class JobNotFound(VisionqError):
    """No job with that id (never existed or expired)."""

    status = 404
    code = "job_not_found"


class JobConflict(VisionqError):
    """The job cannot be cancelled any more."""

    status = 409
    code = "job_not_cancellable"


class IdempotencyConflict(VisionqError):
    """An Idempotency-Key was reused with a different request body."""

    status = 409
    code = "idempotency_conflict"


class PayloadTooLarge(VisionqError):
    """The body, a file or an image's pixel count exceeds a limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(VisionqError):
    """The upload is not an image format we accept."""

    status = 415
    code = "unsupported_media_type"


class RequestInvalid(VisionqError):
    """A form field is missing or out of range."""

    status = 422
    code = "validation_error"


class QueueFull(VisionqError):
    """The model's queue is deeper than VISIONQ_QUEUE_MAX_DEPTH."""

    status = 429
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class RateLimited(VisionqError):
    """The API key used up its VISIONQ_RATE_LIMIT_PER_MINUTE."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.headers = {"Retry-After": str(retry_after_s)}


class BrokerUnavailable(VisionqError):
    """Redis does not answer."""

    status = 503
    code = "broker_unavailable"


class StorageFull(VisionqError):
    """Redis refused a write: it reached its maxmemory (noeviction)."""

    status = 503
    code = "storage_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class Timeout(VisionqError):
    """The jobs did not finish in time."""

    status = 504
    code = "timeout"
