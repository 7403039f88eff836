"""POST /v1/predict (wait for results) and POST /v1/jobs (202, poll later)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.api.deps import api_state
from services.api.idempotency import idempotency_of
from services.api.records import fetch_records
from services.api.schemas import UPLOAD_ERRORS, JobsAccepted, PredictResponse, error_responses
from services.api.state import ApiState
from services.api.submit import check_model, new_job_ids, submit
from services.api.uploads import Refusal, SubmitForm, multipart_form_doc, read_form
from services.common.errors import InvalidImage, Timeout
from services.common.jobs import JobRecord, Status

router = APIRouter(prefix="/v1", tags=["inference"])

_FORM_DOC = multipart_form_doc(with_timeout=True)


def _prediction(record: JobRecord | None, job_id: str, filename: str) -> dict[str, Any]:
    if record is None:
        return {
            "filename": filename,
            "job_id": job_id,
            "error": {"code": "expired", "message": "the job record expired"},
        }
    out: dict[str, Any] = {"filename": filename, "job_id": job_id}
    if record.status == Status.SUCCEEDED and record.result is not None:
        # The worker's random-weights mark is the job's flag, not part of the task's result.
        out["result"] = {k: v for k, v in record.result.items() if k != "random_weights"}
        if "top_k" in record.result:  # classifiers: kept at the top level for compatibility
            out["top_k"] = record.result["top_k"]
        if record.result.get("random_weights"):
            out["random_weights"] = True
    else:
        out["error"] = record.error or {"code": record.status, "message": f"job {record.status}"}
    out["timings"] = record.timings
    return out


@router.post(
    "/predict",
    openapi_extra=_FORM_DOC,
    response_model=PredictResponse,
    responses=error_responses(*UPLOAD_ERRORS, 504),
)
async def predict(request: Request) -> JSONResponse:
    """Upload images and wait for their results (504 with the job ids when not in time)."""
    state = api_state(request)  # not a dependency: each costs FastAPI ~6 us a request
    form = await read_form(request, state.settings, state.registry)
    check_model(state, form.model)
    idem = idempotency_of(request, form, bool(state.key_digests))
    job_ids = new_job_ids(len(form.files))
    events = state.waiter.register(job_ids)
    published: dict[str, JobRecord] = {}
    try:
        earlier = await submit(state, form, job_ids, idem=idem)
        if earlier is not None:
            # A retry: wait for the first request's jobs (they may have ended already).
            state.waiter.unregister(events)
            job_ids = list(earlier["job_ids"])
            events = state.waiter.register(job_ids)
            await state.waiter.recheck(job_ids)
        timeout = form.timeout or state.settings.predict_timeout_s
        try:
            finished = await state.waiter.wait(events, timeout)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when VISIONQ_GRACEFUL_SHUTDOWN_TIMEOUT_S ends.
            # The jobs stay queued and will run: answer 504 with their ids, not a bare 500.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise Timeout("the API is shutting down; poll the jobs", job_ids=job_ids) from None
    finally:
        published = state.waiter.unregister(events)
    records = await _records(state, job_ids, published if finished else {})
    if not finished and any(r is not None and r.status not in _ENDED for r in records):
        exc = Timeout(f"not done within {timeout:g}s; poll the jobs", job_ids=job_ids)
        refused = [part.to_api() for part in form.order() if isinstance(part, Refusal)]
        if refused:
            exc.details["refused"] = refused
        raise exc
    predictions = _in_upload_order(form, records, job_ids)
    jobs = [p for p in predictions if "job_id" in p]  # the refused files have no job
    if all(p.get("error", {}).get("code") == Status.EXPIRED.value for p in jobs):
        # Ended in time, but without running: no worker reached them before the deadline.
        # To the client that waited, that is a timeout (README, "Delivery rules"); files
        # refused on upload are listed as a 4xx lists them.
        late = Timeout(
            f"not done within {timeout:g}s: no worker reached the jobs before their deadline",
            job_ids=job_ids,
        )
        if len(jobs) < len(predictions):
            late.details["refused"] = [p for p in predictions if "job_id" not in p]
        raise late
    if all(p.get("error", {}).get("code") == InvalidImage.code for p in predictions):
        first = predictions[0]["error"]
        raise InvalidImage(first["message"], job_ids=job_ids)
    return JSONResponse({"model": form.model, "predictions": predictions})


async def _records(
    state: ApiState, job_ids: list[str], published: dict[str, JobRecord]
) -> list[JobRecord | None]:
    """The jobs' records: those their done notices carried, the others read from Redis."""
    missing = [j for j in job_ids if j not in published]
    if missing:
        fetched = dict(zip(missing, await fetch_records(state.redis, missing), strict=True))
        return [published.get(j) or fetched[j] for j in job_ids]
    return [published[j] for j in job_ids]


def _in_upload_order(
    form: SubmitForm, records: list[JobRecord | None], job_ids: list[str]
) -> list[dict[str, Any]]:
    """One entry per file part: its prediction, or its refusal (``{"filename", "error"}``)."""
    served = iter(zip(records, job_ids, strict=True))
    out: list[dict[str, Any]] = []
    for part in form.order():
        if isinstance(part, Refusal):
            out.append(part.to_api())
        else:
            record, job_id = next(served)
            out.append(_prediction(record, job_id, part.filename))
    return out


_ENDED = {s.value for s in (Status.SUCCEEDED, Status.FAILED, Status.EXPIRED, Status.CANCELLED)}


@router.post(
    "/jobs",
    status_code=202,
    openapi_extra=_FORM_DOC,
    response_model=JobsAccepted,
    responses=error_responses(*UPLOAD_ERRORS),
)
async def create_jobs(request: Request) -> JSONResponse:
    """Upload images and get job ids to poll."""
    state = api_state(request)  # not a dependency: each costs FastAPI ~6 us a request
    form = await read_form(request, state.settings, state.registry)
    check_model(state, form.model)
    idem = idempotency_of(request, form, bool(state.key_digests))
    job_ids = new_job_ids(len(form.files))
    earlier = await submit(state, form, job_ids, idem=idem)
    if earlier is not None:
        job_ids = list(earlier["job_ids"])  # a retry: the first request's jobs, nothing new
    base = str(request.base_url).rstrip("/")
    ids = iter(job_ids)
    jobs = [
        part.to_api()
        if isinstance(part, Refusal)
        else {
            "job_id": (j := next(ids)),
            "filename": part.filename,
            "status_url": f"{base}/v1/jobs/{j}",
        }
        for part in form.order()
    ]
    return JSONResponse({"jobs": jobs}, status_code=202)
