"""Small HTTP helpers for the integration tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
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


def up_env(models_file: Path, **extra: str) -> dict[str, str]:
    """The environment for a `visionq up` child: no inherited VISIONQ_*, the test model,
    no metrics port, no GPU; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update(
        {
            "VISIONQ_MODELS": TEST_MODEL,
            "VISIONQ_MODELS_FILE": str(models_file),
            "VISIONQ_METRICS_PORT": "0",
            "CUDA_VISIBLE_DEVICES": "",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env
