"""The blocking client: ``with Client(url) as c: c.predict(["cat.jpg"])``."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
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


class Client:
    """visionq over HTTP; retries 429/503 (honouring Retry-After) and refused connections."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 16,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=auth_headers(api_key),
            timeout=timeout_s,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retry.retries + 1):
            last = attempt == self.retry.retries
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                # Nothing reached the server, so even a POST is safe to send again.
                if last:
                    raise TransportError(f"{method} {path}: {exc}") from exc
                time.sleep(self.retry.delay(attempt, None))
                continue
            except httpx.TransportError as exc:
                # Sent but unanswered: only a request with an Idempotency-Key (the same one on
                # every attempt) may be sent again, as the server then creates nothing twice.
                if last or IDEMPOTENCY_HEADER not in kwargs.get("headers", {}):
                    raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                time.sleep(self.retry.delay(attempt, None))
                continue
            except httpx.HTTPError as exc:
                raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code in RETRY_STATUSES and not last:
                time.sleep(self.retry.delay(attempt, resp.headers.get("retry-after")))
                continue
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def predict(
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
        resp = self._request(
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

    def submit(
        self,
        files: Sequence[FileInput],
        model: str | None = None,
        top_k: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> list[JobRef]:
        """Queue the files as interactive jobs: a ref per file, in upload order (a refused
        file has ``error`` instead of an id)."""
        resp = self._request(
            "POST",
            "/v1/jobs",
            files=file_parts(files),
            data=form_fields(model, top_k, params=params),
            headers=idempotency_headers(),
        )
        return [JobRef.from_json(j) for j in json_body(resp)["jobs"]]

    def job(self, job_id: str) -> Job:
        """A job's status, result or error, and timings."""
        return Job.from_json(json_body(self._request("GET", f"/v1/jobs/{job_id}")))

    def cancel_job(self, job_id: str) -> None:
        """Cancel a queued job (ApiError job_not_cancellable once it started)."""
        json_body(self._request("DELETE", f"/v1/jobs/{job_id}"))

    def wait_job(self, job_id: str, timeout: float = 60.0, poll_s: float = 0.5) -> Job:
        """Poll until the job ended; ApiError 'timeout' after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.ended:
                return job
            if time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"job {job_id} still {job.status} after {timeout}s")
            time.sleep(poll_s)

    def models(self) -> list[ModelInfo]:
        """The served models."""
        body = json_body(self._request("GET", "/v1/models"))
        return [ModelInfo.from_json(m) for m in body.get("models", [])]

    def create_batch(
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
                    resp = self._request(
                        "POST",
                        "/v1/batches",
                        files=file_parts(part),
                        data=form_fields(model, top_k, params=params),
                        headers=idempotency_headers(),
                    )
                    body = json_body(resp)
                    batch_id = str(body["batch_id"])
                else:
                    body = self._add(batch_id, part)
            except ApiError as exc:
                whole_chunk = chunk_refused(exc)
                if whole_chunk is not None:
                    refused += whole_chunk
                    continue
                self._abandon(batch_id, exc)
                raise
            except BaseException as exc:
                self._abandon(batch_id, exc)
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

    def _abandon(self, batch_id: str | None, exc: BaseException) -> None:
        """Cancel a half-uploaded batch, so nothing the caller never got an id for runs."""
        if batch_id is None:
            return
        with contextlib.suppress(ClientError):
            self.cancel_batch(batch_id)
        if isinstance(exc, ApiError):
            exc.details["cancelled_batch_id"] = batch_id

    def add_to_batch(
        self, batch_id: str, files: Sequence[FileInput], chunk_size: int = 32
    ) -> BatchStatus:
        """Add files to an open batch; its progress afterwards."""
        for part in chunks(files, chunk_size):
            self._add(batch_id, part)
        return self.batch(batch_id)

    def _add(self, batch_id: str, files: Sequence[FileInput]) -> dict[str, Any]:
        path = f"/v1/batches/{batch_id}/files"
        headers = idempotency_headers()
        resp = self._request("POST", path, files=file_parts(files), headers=headers)
        return json_body(resp)

    def batch(self, batch_id: str) -> BatchStatus:
        """A batch's progress: total, succeeded, failed, cancelled, pending."""
        return BatchStatus.from_json(json_body(self._request("GET", f"/v1/batches/{batch_id}")))

    def batch_results(
        self, batch_id: str, offset: int = 0, limit: int | None = None
    ) -> Iterator[Job]:
        """The batch's jobs in upload order, read as streamed JSON lines."""
        params: dict[str, int] = {"offset": offset}
        if limit is not None:
            params["limit"] = limit
        try:
            with self._http.stream("GET", f"/v1/batches/{batch_id}/results", params=params) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    json_body(resp)
                for line in resp.iter_lines():
                    if line.strip():
                        yield Job.from_json(json.loads(line))
        except httpx.HTTPError as exc:
            raise TransportError(f"batch results: {type(exc).__name__}: {exc}") from exc

    def cancel_batch(self, batch_id: str) -> BatchStatus:
        """Cancel every job of the batch that has not started; its progress afterwards."""
        return BatchStatus.from_json(json_body(self._request("DELETE", f"/v1/batches/{batch_id}")))

    def wait_batch(
        self, batch_id: str, timeout: float | None = None, poll_s: float = 1.0
    ) -> BatchStatus:
        """Poll until no job of the batch is pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.batch(batch_id)
            if status.done:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"batch {batch_id}: {status.pending} still pending")
            time.sleep(poll_s)
