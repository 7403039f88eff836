"""The asyncio client: ``async with AsyncClient(url) as c: await c.predict(["cat.jpg"])``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from services.client._shared import (
    DEFAULT_URL,
    IDEMPOTENCY_HEADER,
    RETRY_STATUSES,
    FileInput,
    RetryPolicy,
    auth_headers,
    chunk_refused,
    chunks,
    file_parts,
    form_fields,
    idempotency_headers,
    json_body,
    refusals,
)
from services.client.errors import ApiError, ClientError, TransportError
from services.client.types import (
    BatchStatus,
    BatchUpload,
    Job,
    JobRef,
    ModelInfo,
    Prediction,
    PredictResult,
    Refusal,
)


class AsyncClient:
    """visionq over HTTP; retries 429/503 (honouring Retry-After) and refused connections."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 16,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=auth_headers(api_key),
            timeout=timeout_s,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retry.retries + 1):
            last = attempt == self.retry.retries
            try:
                resp = await self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                # Nothing reached the server, so even a POST is safe to send again.
                if last:
                    raise TransportError(f"{method} {path}: {exc}") from exc
                await asyncio.sleep(self.retry.delay(attempt, None))
                continue
            except httpx.TransportError as exc:
                # Sent but unanswered: only a request with an Idempotency-Key (the same one on
                # every attempt) may be sent again, as the server then creates nothing twice.
                if last or IDEMPOTENCY_HEADER not in kwargs.get("headers", {}):
                    raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(self.retry.delay(attempt, None))
                continue
            except httpx.HTTPError as exc:
                raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(self.retry.delay(attempt, resp.headers.get("retry-after")))
                continue
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def predict(
        self,
        files: Sequence[FileInput],
        model: str | None = None,
        top_k: int | None = None,
        timeout: float | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> PredictResult:
        """Upload and wait for every file's result (ApiTimeout carries the job ids).

        ``params`` are the model's own options (``GET /v1/models`` lists their schema), e.g.
        ``{"score_threshold": 0.3}`` for a detector; ``top_k`` is the classifiers' one.
        """
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = max(self._http.timeout.read or 0.0, timeout + 10.0)
        resp = await self._request(
            "POST",
            "/v1/predict",
            files=file_parts(files),
            data=form_fields(model, top_k, timeout, params),
            headers=idempotency_headers(),
            **kwargs,
        )
        body = json_body(resp)
        preds = [Prediction.from_json(p) for p in body.get("predictions", [])]
        return PredictResult(str(body.get("model", "")), preds)

    async def submit(
        self,
        files: Sequence[FileInput],
        model: str | None = None,
        top_k: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> list[JobRef]:
        """Queue the files as interactive jobs: a ref per file, in upload order (a refused
        file has ``error`` instead of an id)."""
        resp = await self._request(
            "POST",
            "/v1/jobs",
            files=file_parts(files),
            data=form_fields(model, top_k, params=params),
            headers=idempotency_headers(),
        )
        return [JobRef.from_json(j) for j in json_body(resp)["jobs"]]

    async def job(self, job_id: str) -> Job:
        """A job's status, result or error, and timings."""
        return Job.from_json(json_body(await self._request("GET", f"/v1/jobs/{job_id}")))

    async def cancel_job(self, job_id: str) -> None:
        """Cancel a queued job (ApiError job_not_cancellable once it started)."""
        json_body(await self._request("DELETE", f"/v1/jobs/{job_id}"))

    async def wait_job(self, job_id: str, timeout: float = 60.0, poll_s: float = 0.5) -> Job:
        """Poll until the job ended; ApiError 'timeout' after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job.ended:
                return job
            if time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"job {job_id} still {job.status} after {timeout}s")
            await asyncio.sleep(poll_s)

    async def models(self) -> list[ModelInfo]:
        """The served models."""
        body = json_body(await self._request("GET", "/v1/models"))
        return [ModelInfo.from_json(m) for m in body.get("models", [])]

    async def create_batch(
        self,
        files: Sequence[FileInput],
        model: str | None = None,
        top_k: int | None = None,
        chunk_size: int = 32,
        params: Mapping[str, Any] | None = None,
    ) -> BatchUpload:
        """Upload many files as one low-priority batch, ``chunk_size`` per request.

        Files the server refuses for their content (not an image, corrupt, too many pixels)
        are listed in ``BatchUpload.refused``; the rest are queued under ``batch_id``. Any
        other error cancels what this call had queued and is raised; ApiError (the first
        refusal) when no file at all was accepted.
        """
        if not files:
            raise ValueError("give at least one file")
        batch_id: str | None = None
        added = 0
        refused: list[Refusal] = []
        for part in chunks(files, chunk_size):
            try:
                if batch_id is None:
                    resp = await self._request(
                        "POST",
                        "/v1/batches",
                        files=file_parts(part),
                        data=form_fields(model, top_k, params=params),
                        headers=idempotency_headers(),
                    )
                    body = json_body(resp)
                    batch_id = str(body["batch_id"])
                else:
                    body = await self._add(batch_id, part)
            except ApiError as exc:
                whole_chunk = chunk_refused(exc)
                if whole_chunk is not None:
                    refused += whole_chunk
                    continue
                await self._abandon(batch_id, exc)
                raise
            except BaseException as exc:
                await self._abandon(batch_id, exc)
                raise
            added += int(body.get("added", 0))
            refused += refusals(body)
        if batch_id is None:
            first = refused[0]
            raise ApiError(
                400,
                first.code,
                f"every file was refused; first: {first.message}",
                {"refused": refused},
            )
        return BatchUpload(batch_id, added, refused)

    async def _abandon(self, batch_id: str | None, exc: BaseException) -> None:
        """Cancel a half-uploaded batch, so nothing the caller never got an id for runs."""
        if batch_id is None:
            return
        with contextlib.suppress(ClientError):
            await self.cancel_batch(batch_id)
        if isinstance(exc, ApiError):
            exc.details["cancelled_batch_id"] = batch_id

    async def add_to_batch(
        self, batch_id: str, files: Sequence[FileInput], chunk_size: int = 32
    ) -> BatchStatus:
        """Add files to an open batch; its progress afterwards."""
        for part in chunks(files, chunk_size):
            await self._add(batch_id, part)
        return await self.batch(batch_id)

    async def _add(self, batch_id: str, files: Sequence[FileInput]) -> dict[str, Any]:
        path = f"/v1/batches/{batch_id}/files"
        headers = idempotency_headers()
        return json_body(
            await self._request("POST", path, files=file_parts(files), headers=headers)
        )

    async def batch(self, batch_id: str) -> BatchStatus:
        """A batch's progress: total, succeeded, failed, cancelled, pending."""
        return BatchStatus.from_json(
            json_body(await self._request("GET", f"/v1/batches/{batch_id}"))
        )

    async def batch_results(
        self, batch_id: str, offset: int = 0, limit: int | None = None
    ) -> AsyncIterator[Job]:
        """The batch's jobs in upload order, read as streamed JSON lines."""
        params: dict[str, int] = {"offset": offset}
        if limit is not None:
            params["limit"] = limit
        try:
            async with self._http.stream(
                "GET", f"/v1/batches/{batch_id}/results", params=params
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    json_body(resp)
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield Job.from_json(json.loads(line))
        except httpx.HTTPError as exc:
            raise TransportError(f"batch results: {type(exc).__name__}: {exc}") from exc

    async def cancel_batch(self, batch_id: str) -> BatchStatus:
        """Cancel every job of the batch that has not started; its progress afterwards."""
        return BatchStatus.from_json(
            json_body(await self._request("DELETE", f"/v1/batches/{batch_id}"))
        )

    async def wait_batch(
        self, batch_id: str, timeout: float | None = None, poll_s: float = 1.0
    ) -> BatchStatus:
        """Poll until no job of the batch is pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = await self.batch(batch_id)
            if status.done:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"batch {batch_id}: {status.pending} still pending")
            await asyncio.sleep(poll_s)
