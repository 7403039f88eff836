"""Batches over the real stack: progress, results listing, cancel, and no starvation."""

from __future__ import annotations

import math
import time

import httpx
import pytest

from services.client import ApiError, Client
from tests.conftest import IDLE_MODEL, TEST_MODEL
from tests.images import jpeg
from tests.integration.helpers import error_code, files
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


def _corrupt() -> bytes:
    # Passes the API's header and trailer checks, fails to decode in the worker.
    data = bytearray(jpeg(12))
    middle = len(data) // 2
    data[middle : middle + 500] = b"\xff" * 500
    return bytes(data)


def test_batch_progress_results_and_paging(stack: Stack) -> None:
    images = [(f"img{i:03d}.jpg", jpeg(i, (64, 64))) for i in range(40)]
    images[7] = ("corrupt.jpg", _corrupt())
    with Client(stack.url) as client:
        batch_id = client.create_batch(images, model=TEST_MODEL, top_k=2, chunk_size=16).batch_id
        done = client.wait_batch(batch_id, timeout=120, poll_s=0.3)
        results = list(client.batch_results(batch_id))
        page = list(client.batch_results(batch_id, offset=35, limit=3))
    assert (done.total, done.succeeded, done.failed, done.pending) == (40, 39, 1, 0)
    assert done.status == "done" and done.model == TEST_MODEL
    assert [r.filename for r in results] == [name for name, _ in images]  # upload order
    bad = results[7]
    assert bad.status == "failed" and bad.error is not None
    assert bad.error["code"] == "invalid_image"
    assert all(len(r.top_k) == 2 for i, r in enumerate(results) if i != 7)
    assert [r.filename for r in page] == ["img035.jpg", "img036.jpg", "img037.jpg"]


def test_interactive_request_is_not_starved_by_a_big_batch(stack: Stack) -> None:
    """A big bulk batch is queued; one interactive image still finishes in a few batch times."""
    count = 600
    images = [(f"bulk{i}.jpg", jpeg(1000 + i, (64, 64))) for i in range(count)]
    probe = files(("probe.jpg", jpeg(99, (64, 64))))
    with Client(stack.url) as client:
        start = time.monotonic()
        batch_id = client.create_batch(images, model=TEST_MODEL, chunk_size=32).batch_id
        before = client.batch(batch_id)
        sent = time.monotonic()
        resp = httpx.post(
            f"{stack.url}/v1/predict", files=probe, data={"model": TEST_MODEL}, timeout=60
        )
        latency = time.monotonic() - sent
        after = client.batch(batch_id)
        done = client.wait_batch(batch_id, timeout=240, poll_s=0.5)
        elapsed = time.monotonic() - start
        results = list(client.batch_results(batch_id))
    assert resp.status_code == 200, resp.text
    assert done.succeeded == count and done.failed == 0
    # Proof of priority: the probe ended while the batch still had most of its work queued
    # (in arrival order it would have waited for every one of them).
    assert before.pending > count // 4, before
    assert after.pending > 0, (after, latency)
    batch_sizes = [r.timings["batch_size"] for r in results]
    batches = math.ceil(sum(1 / b for b in batch_sizes))  # each job is 1/size of its batch
    per_batch = elapsed / batches
    # "A few batch times": generous, so two busy cores do not make it flaky.
    assert latency < max(6 * per_batch, 3.0), (latency, per_batch, batches)


def test_cancel_stops_what_has_not_started(stack: Stack) -> None:
    # No worker serves IDLE_MODEL, so every job is still queued when the DELETE comes.
    images = [(f"q{i}.jpg", jpeg(i, (64, 64))) for i in range(5)]
    with Client(stack.url) as client:
        batch_id = client.create_batch(images, model=IDLE_MODEL).batch_id
        queued = client.batch(batch_id)
        cancelled = client.cancel_batch(batch_id)
        results = list(client.batch_results(batch_id))
        with pytest.raises(ApiError) as info:
            client.add_to_batch(batch_id, images[:1])
    assert queued.pending == 5 and queued.status == "running"
    assert cancelled.raw["cancelled_now"] == 5
    assert (cancelled.cancelled, cancelled.pending, cancelled.status) == (5, 0, "cancelled")
    assert {r.status for r in results} == {"cancelled"}
    assert info.value.status == 409


def test_batch_errors(stack: Stack) -> None:
    url = f"{stack.url}/v1/batches"
    assert error_code(httpx.get(f"{url}/{'0' * 32}")) == "batch_not_found"
    assert httpx.get(f"{url}/not-an-id").status_code == 404
    assert httpx.delete(f"{url}/{'0' * 32}").status_code == 404
    text = [("file", ("notes.txt", b"hello", "text/plain"))]
    resp = httpx.post(url, files=text, data={"model": TEST_MODEL})
    assert resp.status_code == 415 and error_code(resp) == "unsupported_media_type"
    resp = httpx.post(url, files=files(("a.jpg", jpeg(1, (64, 64)))), data={"model": "nope"})
    assert resp.status_code == 404 and error_code(resp) == "model_not_found"


def test_status_urls_are_absolute_for_batches_as_for_jobs(stack: Stack) -> None:
    parts = files(("a.jpg", jpeg(1, (64, 64))))
    batch = httpx.post(f"{stack.url}/v1/batches", files=parts, data={"model": TEST_MODEL})
    assert batch.status_code == 201, batch.text
    body = batch.json()
    assert body["status_url"] == f"{stack.url}/v1/batches/{body['batch_id']}"
    progress = httpx.get(body["status_url"])
    assert progress.status_code == 200
    assert progress.json()["results_url"] == f"{body['status_url']}/results"
    assert httpx.get(progress.json()["results_url"]).status_code == 200
    jobs = httpx.post(f"{stack.url}/v1/jobs", files=parts, data={"model": TEST_MODEL}).json()
    assert jobs["jobs"][0]["status_url"].startswith(f"{stack.url}/v1/jobs/")
