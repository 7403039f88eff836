"""Batches: many images under one id, run on the models' bulk queues behind interactive jobs.

A batch is ``vq:batch:<id>`` (a hash: model, params (JSON), created, cancelled) and
``vq:batch:<id>:jobs`` (the job ids in upload order). Both live as long as a job may wait
plus as long as its result stays readable, renewed on every upload. Progress is counted
from the job records themselves, so it needs nothing from the workers.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.api.deps import StateDep
from services.api.idempotency import Idempotency, idempotency_of
from services.api.records import fetch_records, fetch_statuses
from services.api.schemas import (
    UPLOAD_ERRORS,
    V1_ERRORS,
    BatchCancelled,
    BatchCreated,
    BatchFilesAdded,
    BatchStatus,
    error_responses,
)
from services.api.state import ApiState
from services.api.submit import check_model, new_job_ids, submit
from services.api.uploads import SubmitForm, multipart_form_doc, read_form
from services.common.errors import JobConflict, JobNotFound
from services.common.jobs import BULK
from services.common.protocol.keys import batch_key, batch_members_key
from services.common.protocol.scripts import cancel_jobs, hash_flag

router = APIRouter(prefix="/v1/batches", tags=["batches"])

_FORM_DOC = multipart_form_doc(with_timeout=False)
_ID = re.compile(r"^[0-9a-f]{32}$")
# Ids are read from Redis this many at a time, so a 10,000-image batch is never one reply.
_PAGE = 1000
_PENDING = ("queued", "running")
_FAILED = ("failed", "expired")


class NdjsonResponse(StreamingResponse):
    """A stream of JSON lines."""

    media_type = "application/x-ndjson"


class BatchNotFound(JobNotFound):
    """No batch with that id (never existed or expired)."""

    code = "batch_not_found"


async def _meta(state: ApiState, batch_id: str) -> dict[str, str]:
    if not _ID.match(batch_id):
        raise BatchNotFound(f"no batch {batch_id[:64]!r}")
    raw = await state.redis.hgetall(batch_key(batch_id))
    if not raw:
        raise BatchNotFound(f"no batch {batch_id}: unknown, or it expired")
    return {_str(k): _str(v) for k, v in raw.items()}


def _str(value: bytes | str) -> str:
    # The API's client returns bytes; the stubs allow either.
    return value.decode() if isinstance(value, bytes) else value


def _ttl(state: ApiState) -> int:
    return state.settings.job_ttl_s + state.settings.result_ttl_s


async def _add(
    state: ApiState, batch_id: str, form: SubmitForm, idem: Idempotency | None = None
) -> tuple[int, str]:
    """Queue the form's files on the bulk lane and record them as members.

    Returns the batch's new total and its id: an Idempotency-Key retry adds nothing and
    answers with the batch the first request used.
    """
    job_ids = new_job_ids(len(form.files))
    earlier = await submit(state, form, job_ids, lane=BULK, idem=idem, batch_id=batch_id)
    if earlier is not None:
        first = str(earlier["batch_id"])
        return int(await state.redis.llen(batch_members_key(first))), first
    pipe = state.redis.pipeline(transaction=True)
    pipe.rpush(batch_members_key(batch_id), *job_ids)
    pipe.expire(batch_members_key(batch_id), _ttl(state))
    pipe.expire(batch_key(batch_id), _ttl(state))
    pipe.hget(batch_key(batch_id), "cancelled")
    total, _, _, cancelled = await pipe.execute()
    if cancelled:
        # A DELETE ran while these were being stored: it could not see them, so do its work.
        await _cancel(state, job_ids)
    return int(total), batch_id


async def _ids(state: ApiState, batch_id: str, offset: int = 0) -> AsyncIterator[list[str]]:
    start = offset
    while True:
        page = await state.redis.lrange(batch_members_key(batch_id), start, start + _PAGE - 1)
        if not page:
            return
        yield [_str(i) for i in page]
        start += len(page)


def _base(request: Request) -> str:
    """The API's own URL, for absolute links as /v1/jobs gives (the proxy's scheme where
    trusted: VISIONQ_FORWARDED_ALLOW_IPS)."""
    return str(request.base_url).rstrip("/")


async def _summary(
    state: ApiState, batch_id: str, meta: dict[str, str], base: str
) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    async for ids in _ids(state, batch_id):
        counts.update(s or "expired" for s in await fetch_statuses(state.redis, ids))
    pending = sum(counts[s] for s in _PENDING)
    status = "cancelled" if meta.get("cancelled") else ("running" if pending else "done")
    return {
        "batch_id": batch_id,
        "model": meta["model"],
        "params": json.loads(meta.get("params") or "{}"),
        "created": float(meta["created"]),
        "status": status,
        "total": sum(counts.values()),
        "succeeded": counts["succeeded"],
        "failed": sum(counts[s] for s in _FAILED),
        "cancelled": counts["cancelled"],
        "pending": pending,
        "queued": counts["queued"],
        "running": counts["running"],
        "results_url": f"{base}/v1/batches/{batch_id}/results",  # absolute, as status_url
    }


async def _cancel(state: ApiState, job_ids: list[str]) -> int:
    outcomes = await cancel_jobs(state.redis, job_ids, result_ttl_s=state.settings.result_ttl_s)
    return sum(1 for outcome in outcomes if outcome == 1)


@router.post(
    "",
    status_code=201,
    openapi_extra=_FORM_DOC,
    response_model=BatchCreated,
    responses=error_responses(*UPLOAD_ERRORS),
)
async def create_batch(request: Request, state: StateDep) -> JSONResponse:
    """Start a batch with the uploaded files; add more with POST /v1/batches/{id}/files."""
    form = await read_form(request, state.settings, state.registry)
    check_model(state, form.model)
    idem = idempotency_of(request, form, bool(state.key_digests))
    batch_id = uuid.uuid4().hex
    meta: list[str | int | float] = ["model", form.model, "params", form.params_json]
    meta += ["created", time.time()]
    await state.redis.hset(batch_key(batch_id), items=meta)
    await state.redis.expire(batch_key(batch_id), _ttl(state))
    try:
        total, first = await _add(state, batch_id, form, idem)
    except BaseException:
        await state.redis.delete(batch_key(batch_id))
        raise
    if first != batch_id:  # a retry: the batch made by the first request stands
        await state.redis.delete(batch_key(batch_id))
        batch_id = first
    body = {"batch_id": batch_id, "model": form.model, "added": len(form.files), "total": total}
    body["status_url"] = f"{_base(request)}/v1/batches/{batch_id}"
    body["refused"] = [r.to_api() for r in form.refused]
    return JSONResponse(body, status_code=201)


@router.post(
    "/{batch_id}/files",
    openapi_extra=_FORM_DOC,
    response_model=BatchFilesAdded,
    responses=error_responses(*UPLOAD_ERRORS, 409),
)
async def add_files(batch_id: str, request: Request, state: StateDep) -> dict[str, Any]:
    """Add files to a batch; they use the model and params the batch was created with."""
    meta = await _meta(state, batch_id)
    if meta.get("cancelled"):
        raise JobConflict(f"batch {batch_id} was cancelled; start a new one", status="cancelled")
    form = await read_form(request, state.settings, state.registry, model=meta["model"])
    form = dataclasses.replace(form, params=json.loads(meta.get("params") or "{}"))
    idem = idempotency_of(request, form, bool(state.key_digests))
    total, _ = await _add(state, batch_id, form, idem)
    refused = [r.to_api() for r in form.refused]
    return {"batch_id": batch_id, "added": len(form.files), "total": total, "refused": refused}


@router.get("/{batch_id}", response_model=BatchStatus, responses=error_responses(*V1_ERRORS, 404))
async def get_batch(batch_id: str, request: Request, state: StateDep) -> dict[str, Any]:
    """Progress: total, succeeded, failed, cancelled, pending."""
    meta = await _meta(state, batch_id)
    return await _summary(state, batch_id, meta, _base(request))


@router.get(
    "/{batch_id}/results",
    response_class=NdjsonResponse,
    responses={
        200: {
            "description": "JSON lines, one GET /v1/jobs/{job_id} object per file",
            "content": {NdjsonResponse.media_type: {"schema": {"type": "string"}}},
        },
        **error_responses(*V1_ERRORS, 404, json_route=False),
    },
)
async def batch_results(
    batch_id: str,
    state: StateDep,
    # Redis list indexes are 64-bit; a bound far past any batch keeps LRANGE valid.
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> StreamingResponse:
    """The batch's jobs in upload order as JSON lines (one GET /v1/jobs/{id} object each)."""
    await _meta(state, batch_id)

    async def lines() -> AsyncIterator[bytes]:
        left = limit
        async for ids in _ids(state, batch_id, offset):
            ids = ids if left is None else ids[:left]
            for job_id, record in zip(ids, await fetch_records(state.redis, ids), strict=True):
                item = record.to_api() if record else {"job_id": job_id, "status": "expired"}
                yield (json.dumps(item) + "\n").encode()
            if left is not None:
                left -= len(ids)
                if left <= 0:
                    return

    return NdjsonResponse(lines())


@router.delete(
    "/{batch_id}", response_model=BatchCancelled, responses=error_responses(*V1_ERRORS, 404)
)
async def cancel_batch(batch_id: str, request: Request, state: StateDep) -> dict[str, Any]:
    """Cancel every job of the batch that has not started; running and ended ones stay."""
    meta = await _meta(state, batch_id)
    # Flag first: an upload that finishes after this sees the flag and cancels its own jobs.
    await hash_flag(state.redis, batch_key(batch_id), "cancelled", str(time.time()))
    meta["cancelled"] = "1"
    cancelled = 0
    async for ids in _ids(state, batch_id):
        cancelled += await _cancel(state, ids)
    summary = await _summary(state, batch_id, meta, _base(request))
    return {**summary, "cancelled_now": cancelled}
