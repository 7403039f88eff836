"""GET and DELETE /v1/jobs/{job_id}."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter

from services.api.deps import StateDep
from services.api.records import fetch_records
from services.common.errors import JobConflict, JobNotFound
from services.common.protocol.scripts import cancel_jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def _check_id(job_id: str) -> None:
    if not _JOB_ID.match(job_id):
        raise JobNotFound(f"no job {job_id[:64]!r}")


@router.get("/{job_id}")
async def get_job(job_id: str, state: StateDep) -> dict[str, Any]:
    """A job's status, result or error, and timings."""
    _check_id(job_id)
    (record,) = await fetch_records(state.redis, [job_id])
    if record is None:
        raise JobNotFound(f"no job {job_id}: unknown, or its result expired")
    return record.to_api()


@router.delete("/{job_id}")
async def cancel_job(job_id: str, state: StateDep) -> dict[str, Any]:
    """Cancel a job that has not started."""
    _check_id(job_id)
    (outcome,) = await cancel_jobs(state.redis, [job_id], result_ttl_s=state.settings.result_ttl_s)
    if outcome < 0:
        raise JobNotFound(f"no job {job_id}: unknown, or its result expired")
    if outcome == 0:
        (record,) = await fetch_records(state.redis, [job_id])
        status = record.status if record else "expired"
        raise JobConflict(
            f"job {job_id} is {status}; only queued jobs can be cancelled", status=status
        )
    return {"job_id": job_id, "status": "cancelled"}
