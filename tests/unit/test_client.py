"""The Python client against httpx mock transports: retries, Retry-After, error codes."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable

import httpx
import pytest

from services.client import (
    ApiError,
    ApiTimeout,
    AsyncClient,
    Client,
    RetryableError,
    RetryPolicy,
    TransportError,
)
from services.client._shared import parse_retry_after

Handler = Callable[[httpx.Request], httpx.Response]

_OK = {
    "model": "m",
    "predictions": [
        {
            "filename": "a.jpg",
            "job_id": "j1",
            "top_k": [{"label": "cat", "index": 3, "score": 0.9}],
            "timings": {"batch_size": 2},
        }
    ],
}


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened", "job_ids": ["j1"]}}
    return httpx.Response(status, json=body, headers=headers)


def _sequence(*answers: httpx.Response) -> tuple[Handler, list[float]]:
    """A handler that gives ``answers`` in turn and records when each request came."""
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return answers[min(len(seen), len(answers)) - 1]

    return handler, seen


def test_retry_after_is_honoured_then_success() -> None:
    handler, seen = _sequence(
        _error(429, "queue_full", {"Retry-After": "0.3"}), httpx.Response(200, json=_OK)
    )
    with Client("http://x", transport=httpx.MockTransport(handler)) as client:
        result = client.predict([("a.jpg", b"data")], top_k=1)
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 0.25  # waited what the server asked, not the 0.5 s backoff
    assert result.model == "m"
    assert result.predictions[0].top_k[0].label == "cat"
    assert result.predictions[0].timings["batch_size"] == 2


def test_retries_run_out_with_the_servers_code() -> None:
    handler, seen = _sequence(_error(503, "broker_unavailable"))
    policy = RetryPolicy(retries=2, backoff_s=0.01)
    with (
        Client("http://x", retry=policy, transport=httpx.MockTransport(handler)) as client,
        pytest.raises(RetryableError) as info,
    ):
        client.models()
    assert len(seen) == 3
    assert info.value.status == 503 and info.value.code == "broker_unavailable"


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [(415, "unsupported_media_type", ApiError), (504, "timeout", ApiTimeout)],
)
def test_errors_carry_code_and_details(status: int, code: str, cls: type[ApiError]) -> None:
    handler, seen = _sequence(_error(status, code))
    with (
        Client("http://x", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(cls) as info,
    ):
        client.predict([("a.txt", b"text")])
    assert len(seen) == 1  # no retry for these
    assert info.value.code == code and info.value.message == f"{code} happened"
    if isinstance(info.value, ApiTimeout):
        assert info.value.job_ids == ["j1"]


def test_non_json_error_still_has_a_code() -> None:
    handler, _ = _sequence(httpx.Response(502, text="bad gateway"))
    with (
        Client("http://x", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ApiError) as info,
    ):
        client.job("0" * 32)
    assert info.value.code == "http_502" and "bad gateway" in info.value.message


def test_refused_connection_is_retried_then_reported() -> None:
    calls: list[int] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    policy = RetryPolicy(retries=1, backoff_s=0.01)
    with (
        Client("http://x", retry=policy, transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(TransportError),
    ):
        client.models()
    assert len(calls) == 2


def test_api_key_and_form_fields_are_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_OK)

    client = Client("http://x/", api_key="k" * 16, transport=httpx.MockTransport(handler))
    client.predict([("a.jpg", b"\xff\xd8")], model="m2", top_k=3, timeout=5)
    client.close()
    body = seen[0].read()
    assert seen[0].headers["authorization"] == "Bearer " + "k" * 16
    assert seen[0].url.path == "/v1/predict"
    for field in (b'name="model"\r\n\r\nm2', b'name="top_k"\r\n\r\n3', b'name="timeout"\r\n\r\n5'):
        assert field in body


def test_batch_calls_chunk_uploads_and_stream_results() -> None:
    posts: list[str] = []
    lines = [{"job_id": f"j{i}", "status": "succeeded", "result": {"top_k": []}} for i in range(3)]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posts.append(request.url.path)
            return httpx.Response(201, json={"batch_id": "b" * 32, "total": 1})
        if request.url.path.endswith("/results"):
            assert request.url.params["offset"] == "1"
            text = "".join(json.dumps(x) + "\n" for x in lines)
            return httpx.Response(200, text=text)
        return httpx.Response(200, json={"batch_id": "b" * 32, "total": 5, "pending": 0})

    with Client("http://x", transport=httpx.MockTransport(handler)) as client:
        files = [(f"{i}.jpg", b"x") for i in range(5)]
        batch_id = client.create_batch(files, chunk_size=2).batch_id
        assert client.wait_batch(batch_id).done
        jobs = list(client.batch_results(batch_id, offset=1))
    assert posts == [
        "/v1/batches",
        f"/v1/batches/{batch_id}/files",
        f"/v1/batches/{batch_id}/files",
    ]
    assert [j.job_id for j in jobs] == ["j0", "j1", "j2"] and all(j.ended for j in jobs)


def test_async_client_retries_and_raises_alike() -> None:
    handler, seen = _sequence(
        _error(429, "queue_full", {"Retry-After": "0"}), _error(404, "model_not_found")
    )

    async def go() -> ApiError:
        async with AsyncClient("http://x", transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(ApiError) as info:
                await client.predict([("a.jpg", b"x")], model="nope")
            return info.value

    err = asyncio.run(go())
    assert len(seen) == 2 and err.code == "model_not_found" and err.status == 404


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after(later) or 0) <= 31
    assert RetryPolicy(max_wait_s=5).delay(0, "3600") == 5  # a huge ask is capped


def test_chunks_bound_count_and_bytes() -> None:
    from services.client._shared import chunks

    items = [(f"{i}", b"x" * 10) for i in range(7)]
    assert [len(c) for c in chunks(items, 3)] == [3, 3, 1]
    assert [len(c) for c in chunks(items, 100, max_bytes=25)] == [2, 2, 2, 1]
    assert [len(c) for c in chunks([("big", b"x" * 50), *items[:1]], 10, max_bytes=25)] == [1, 1]
    assert chunks([], 3) == []


def _keys_of(answers: list[Callable[[httpx.Request], httpx.Response]]) -> tuple[Handler, list[str]]:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("idempotency-key", ""))
        return answers[min(len(keys), len(answers)) - 1](request)

    return handler, keys


def _lost(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("the answer was lost", request=request)


def test_each_submitting_call_has_one_key_reused_on_every_retry() -> None:
    busy = _error(503, "storage_full", {"Retry-After": "0"})
    handler, keys = _keys_of([lambda _: busy, _lost, lambda _: httpx.Response(200, json=_OK)])
    policy = RetryPolicy(retries=3, backoff_s=0.0)
    with Client("http://x", retry=policy, transport=httpx.MockTransport(handler)) as client:
        client.predict([("a.jpg", b"x")])
        assert len(keys) == 3 and len(set(keys)) == 1 and len(keys[0]) >= 16
        client.predict([("a.jpg", b"x")])
    assert keys[3] != keys[0]  # a new call is a new request


def test_async_client_sends_keys_alike() -> None:
    handler, keys = _keys_of([_lost, lambda _: httpx.Response(202, json={"jobs": []})])

    async def go() -> None:
        policy = RetryPolicy(retries=2, backoff_s=0.0)
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://x", retry=policy, transport=transport) as client:
            await client.submit([("a.jpg", b"x")])

    asyncio.run(go())
    assert len(keys) == 2 and keys[0] == keys[1] != ""


def test_a_lost_answer_without_a_key_is_not_sent_again() -> None:
    handler, keys = _keys_of([_lost])
    policy = RetryPolicy(retries=3, backoff_s=0.0)
    with (
        Client("http://x", retry=policy, transport=httpx.MockTransport(handler)) as client,
        pytest.raises(TransportError),
    ):
        client.cancel_job("0" * 32)  # DELETE: no key, so the client cannot know it is safe
    assert len(keys) == 1
