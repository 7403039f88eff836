"""Errors raised by the visionq client.

Hierarchy::

    ClientError              base of everything the client raises
    ├── TransportError       no HTTP answer (refused, reset, timed out)
    └── ApiError             the server answered with an error; ``code`` is its error code
        ├── RetryableError   429 queue_full or 503 broker_unavailable, still failing after retries
        └── ApiTimeout       504 timeout: the jobs were accepted but not done in time
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base class of the client's errors."""


class TransportError(ClientError):
    """The request got no HTTP answer."""


class ApiError(ClientError):
    """An error answer: ``status``, the contract's ``code`` and ``message``, extra ``details``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after_s = retry_after_s


class RetryableError(ApiError):
    """429 or 503 that outlasted the retries."""


class ApiTimeout(ApiError):
    """504: not done in time; ``job_ids`` can be polled."""

    @property
    def job_ids(self) -> list[str]:
        """The ids of the jobs that were accepted."""
        ids = self.details.get("job_ids", [])
        return [str(i) for i in ids] if isinstance(ids, list) else []
