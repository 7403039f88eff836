"""Small HTTP helpers for the integration tests."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.conftest import TEST_MODEL

Files = list[tuple[str, tuple[str, bytes, str]]]


def files(*items: tuple[str, bytes]) -> Files:
    """Multipart 'file' parts; the declared content type is deliberately always image/jpeg."""
    return [("file", (name, data, "image/jpeg")) for name, data in items]


def predict(url: str, parts: Files, **form: Any) -> httpx.Response:
    """POST /v1/predict."""
    data = {"model": TEST_MODEL, **{k: str(v) for k, v in form.items()}}
    return httpx.post(f"{url}/v1/predict", files=parts, data=data, timeout=90)


def submit(url: str, parts: Files, **form: Any) -> list[str]:
    """POST /v1/jobs; the job ids."""
    data = {"model": TEST_MODEL, **{k: str(v) for k, v in form.items()}}
    resp = httpx.post(f"{url}/v1/jobs", files=parts, data=data, timeout=30)
    assert resp.status_code == 202, resp.text
    return [job["job_id"] for job in resp.json()["jobs"]]


def job(url: str, job_id: str) -> dict[str, Any]:
    """GET /v1/jobs/{id}."""
    resp = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_jobs(url: str, job_ids: list[str], timeout: float = 120.0) -> list[dict[str, Any]]:
    """Poll (slowly: tests only) until every job has ended; the final records."""
    ended = {"succeeded", "failed", "expired", "cancelled"}
    deadline = time.monotonic() + timeout
    records: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id not in records or records[job_id]["status"] not in ended:
                records[job_id] = job(url, job_id)
        if all(r["status"] in ended for r in records.values()):
            return [records[j] for j in job_ids]
        time.sleep(0.25)
    pending = {j: r["status"] for j, r in records.items() if r["status"] not in ended}
    raise AssertionError(f"jobs not ended in {timeout}s: {pending}")


def error_code(resp: httpx.Response) -> str:
    """The contract's error code of a response."""
    code: str = resp.json()["error"]["code"]
    return code
