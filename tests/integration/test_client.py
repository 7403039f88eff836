"""The Python client, sync and async, against the real stack."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.client import ApiError, ApiTimeout, AsyncClient, Client, PredictResult
from tests.conftest import IDLE_MODEL, TEST_MODEL, TINY_LABELS, TINY_MODEL
from tests.images import encode, jpeg, make_image
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

KEY = "client-test-key-0123456789"


def test_sync_client_predict_jobs_models(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(encode(make_image(3, (80, 60)), "PNG"))
    with Client(stack.url) as client:
        result = client.predict([path, ("dog.jpg", jpeg(4, (64, 64)))], model=TEST_MODEL, top_k=3)
        refs = client.submit([("tiny.jpg", jpeg(5, (64, 64)))], model=TINY_MODEL, top_k=2)
        job = client.wait_job(refs[0].job_id, timeout=60, poll_s=0.2)
        models = {m.name: m for m in client.models()}
    assert result.model == TEST_MODEL
    assert [p.filename for p in result.predictions] == ["cat.png", "dog.jpg"]
    assert all(p.ok and len(p.top_k) == 3 for p in result.predictions)
    assert all(p.timings["batch_size"] >= 1 for p in result.predictions)
    assert job.status == "succeeded" and len(job.top_k) == 2
    assert {label.label for label in job.top_k} <= set(TINY_LABELS)
    assert models[TEST_MODEL].default and models[TEST_MODEL].live_workers == 1
    assert models[TINY_MODEL].input_size == 64


def test_sync_client_errors_carry_the_servers_code(stack: Stack) -> None:
    with Client(stack.url) as client:
        with pytest.raises(ApiError) as missing:
            client.predict([("a.jpg", jpeg(1, (64, 64)))], model="nope")
        with pytest.raises(ApiError) as text:
            client.predict([("notes.txt", b"hello")])
        with pytest.raises(ApiError) as unknown:
            client.job("0" * 32)
        # No worker serves IDLE_MODEL: the wait runs out and the job ids come back.
        with pytest.raises(ApiTimeout) as late:
            client.predict([("a.jpg", jpeg(1, (64, 64)))], model=IDLE_MODEL, timeout=0.5)
        (job_id,) = late.value.job_ids
        client.cancel_job(job_id)
        assert client.job(job_id).status == "cancelled"
    assert (missing.value.status, missing.value.code) == (404, "model_not_found")
    assert (text.value.status, text.value.code) == (415, "unsupported_media_type")
    assert unknown.value.code == "job_not_found"
    assert late.value.status == 504 and late.value.code == "timeout"


def test_async_client_concurrent_predicts(stack: Stack) -> None:
    async def go() -> list[PredictResult]:
        async with AsyncClient(stack.url) as client:
            calls = [
                client.predict([(f"{i}.jpg", jpeg(i, (64, 64)))], model=TEST_MODEL, top_k=1)
                for i in range(8)
            ]
            return list(await asyncio.gather(*calls))

    results = asyncio.run(go())
    assert [r.predictions[0].filename for r in results] == [f"{i}.jpg" for i in range(8)]
    assert all(len(r.predictions[0].top_k) == 1 for r in results)


def test_api_key_is_sent(stack: Stack, tmp_path: Path) -> None:
    # A second API on the same Redis, with keys: the shared worker serves its jobs.
    keyed = Stack(stack.redis_url, tmp_path, {**stack.env, "VISIONQ_API_KEYS": KEY})
    try:
        keyed.start_api()
        with Client(keyed.url) as anonymous, pytest.raises(ApiError) as refused:
            anonymous.models()
        with Client(keyed.url, api_key=KEY) as client:
            result = client.predict([("a.jpg", jpeg(6, (64, 64)))], model=TEST_MODEL)
    finally:
        keyed.stop_all()
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    assert result.predictions[0].ok


def test_create_batch_reports_refused_files_and_keeps_the_rest(stack: Stack) -> None:
    good = [(f"ok{i}.jpg", jpeg(10 + i, (48, 48))) for i in range(5)]
    files = [
        good[0],
        good[1],  # chunk 1: all good
        ("notes.txt", b"not an image"),
        good[2],  # chunk 2: one refused among good
        ("cut.jpg", jpeg(3)[:100]),
        ("empty.png", b""),  # chunk 3: every file refused (the server answers 4xx)
        good[3],
        good[4],
    ]
    with Client(stack.url) as client:
        upload = client.create_batch(files, model=TEST_MODEL, chunk_size=2)
        status = client.wait_batch(upload.batch_id, timeout=120, poll_s=0.3)
    assert upload.added == 5 and status.total == 5 and status.succeeded == 5
    refused = {r.filename: r.code for r in upload.refused}
    assert refused == {
        "notes.txt": "unsupported_media_type",
        "cut.jpg": "invalid_image",
        "empty.png": "invalid_image",
    }
    assert all(r.filename in r.message for r in upload.refused)


def test_create_batch_cancels_what_it_queued_before_raising(stack: Stack) -> None:
    too_big = ("huge.jpg", b"\xff\xd8" + bytes(3 * 1024 * 1024))  # over the 2 MiB body cap
    files = [("a.jpg", jpeg(1, (48, 48))), ("b.jpg", jpeg(2, (48, 48))), too_big]
    with Client(stack.url) as client:
        with pytest.raises(ApiError) as info:
            # IDLE_MODEL has no worker: the first chunk's jobs would wait for ever.
            client.create_batch(files, model=IDLE_MODEL, chunk_size=2)
        assert info.value.code == "payload_too_large"
        batch_id = info.value.details["cancelled_batch_id"]
        status = client.batch(batch_id)
    assert status.status == "cancelled" and status.cancelled == 2 and status.pending == 0


def test_async_create_batch_follows_the_same_rule(stack: Stack) -> None:
    files = [("x.txt", b"text"), ("ok.jpg", jpeg(7, (48, 48))), ("y.txt", b"more text")]

    async def go() -> tuple[str, int, list[str]]:
        async with AsyncClient(stack.url) as client:
            up = await client.create_batch(files, model=TEST_MODEL, chunk_size=1)
            return up.batch_id, up.added, [r.filename for r in up.refused]

    batch_id, added, refused = asyncio.run(go())
    assert len(batch_id) == 32 and added == 1 and refused == ["x.txt", "y.txt"]


def test_submit_and_predict_follow_the_multi_file_rule(stack: Stack) -> None:
    files = [("a.jpg", jpeg(1, (48, 48))), ("bad.txt", b"text"), ("b.jpg", jpeg(2, (48, 48)))]
    with Client(stack.url) as client:
        refs = client.submit(files, model=TEST_MODEL)
        result = client.predict(files, model=TEST_MODEL)
    assert [r.filename for r in refs] == ["a.jpg", "bad.txt", "b.jpg"]
    assert [r.ok for r in refs] == [True, False, True]
    assert refs[1].error is not None and refs[1].error["code"] == "unsupported_media_type"
    assert [p.ok for p in result.predictions] == [True, False, True]
    assert result.predictions[1].error == refs[1].error
