"""The job record: statuses and the shape the API reports.

A job is a Redis hash ``vq:job:<id>`` plus its image bytes under ``vq:img:<id>`` (claim
check: the Celery message carries only the id). Key names and the atomic transitions
(submit, claim, finish, cancel: Lua scripts, one round trip each) live in
``services.common.protocol``; every move to a terminal status goes through its
``finish_fn.lua``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# Key names live in the protocol package; re-exported here for the modules that use them.
from services.common.protocol.keys import (
    BULK,
    DONE_CHANNEL,
    INTERACTIVE,
    LANES,
    QUEUED_INDEX,
    WORKER_PATTERN,
    image_key,
    job_key,
    queue_name,
    worker_key,
)

__all__ = [
    "BULK",
    "DONE_CHANNEL",
    "INTERACTIVE",
    "LANES",
    "QUEUED_INDEX",
    "TASK_NAME",
    "TERMINAL",
    "WORKER_PATTERN",
    "JobRecord",
    "Status",
    "image_key",
    "job_key",
    "queue_name",
    "worker_key",
]

TASK_NAME = "visionq.infer"


class Status(StrEnum):
    """Life cycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.EXPIRED, Status.CANCELLED})

# The record fields a done notice carries, in order (finish_fn.lua's HMGET).
_NOTICE_FIELDS = ("model", "status", "filename", "result", "error", "timings")


@dataclass
class JobRecord:
    """A job as the API reports it."""

    job_id: str
    model: str
    status: str
    filename: str = ""
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    timings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
        """Build from HGETALL output."""
        return cls._from_fields(
            job_id, {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        )

    @classmethod
    def from_notice(cls, job_id: str, payload: bytes) -> JobRecord | None:
        """Build from the JSON array a done notice carries (finish_fn.lua); None if bad.

        The array holds model, status, filename, result, error, timings, ``false`` where a
        field is absent.
        """
        try:
            values = json.loads(payload.decode("utf-8", "replace"))
        except ValueError:
            return None
        if not isinstance(values, list) or len(values) != len(_NOTICE_FIELDS):
            return None
        h = {k: v for k, v in zip(_NOTICE_FIELDS, values, strict=True) if isinstance(v, str)}
        return cls._from_fields(job_id, h)

    @classmethod
    def _from_fields(cls, job_id: str, h: dict[str, str]) -> JobRecord:
        return cls(
            job_id=job_id,
            model=h.get("model", ""),
            status=h.get("status", ""),
            filename=h.get("filename", ""),
            result=json.loads(h["result"]) if h.get("result") else None,
            error=json.loads(h["error"]) if h.get("error") else None,
            timings=json.loads(h["timings"]) if h.get("timings") else {},
        )

    def to_api(self) -> dict[str, Any]:
        """The JSON shape of GET /v1/jobs/{id}."""
        out: dict[str, Any] = {"job_id": self.job_id, "model": self.model, "status": self.status}
        if self.filename:
            out["filename"] = self.filename
        if self.result is not None:
            result = self.result
            if result.get("random_weights"):
                # The worker marks results of random weights; the flag is the job's, not
                # part of the task's result.
                out["random_weights"] = True
                result = {k: v for k, v in result.items() if k != "random_weights"}
            out["result"] = result
        if self.error is not None:
            out["error"] = self.error
        out["timings"] = self.timings
        return out
