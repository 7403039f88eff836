"""Idempotency-Key on the submitting routes: a retried request creates nothing (issue 10).

Real API, real worker, real Redis. The number of job records in Redis is counted before and
after, so a second set of jobs cannot hide behind a matching answer.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.client import Client
from services.common.redis_server import RedisServer
from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.helpers import error_code, files, wait_jobs
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

KEY_A = "idem-tenant-a-0123456789"
KEY_B = "idem-tenant-b-0123456789"


def _jobs_in(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url)
    return sum(1 for _ in client.scan_iter("vq:job:*", count=1000))


def _post(
    url: str, path: str, key: str | None, *images: tuple[str, bytes], **form: Any
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    data = {"model": TEST_MODEL, **{k: str(v) for k, v in form.items()}}
    return httpx.post(f"{url}{path}", files=files(*images), data=data, headers=headers, timeout=90)


def _ids(resp: httpx.Response) -> list[str]:
    body = resp.json()
    items = body["jobs"] if "jobs" in body else body["predictions"]
    return [item["job_id"] for item in items]


def test_jobs_same_key_same_body_returns_the_first_jobs(
    stack: Stack, redis_server: RedisServer
) -> None:
    key = uuid.uuid4().hex
    images = [("a.jpg", jpeg(1, (96, 96))), ("b.jpg", jpeg(2, (96, 96)))]
    before = _jobs_in(redis_server)
    first = _post(stack.url, "/v1/jobs", key, *images)
    assert first.status_code == 202, first.text
    again = _post(stack.url, "/v1/jobs", key, *images)
    assert again.status_code == 202, again.text
    assert _ids(again) == _ids(first)
    assert _jobs_in(redis_server) - before == 2  # the retry created nothing
    assert [r["status"] for r in wait_jobs(stack.url, _ids(first))] == ["succeeded"] * 2
    # After the jobs ended, the key still answers with them (it lives as long as a job may).
    late = _post(stack.url, "/v1/jobs", key, *images)
    assert _ids(late) == _ids(first)
    assert _jobs_in(redis_server) - before == 2


def test_same_key_other_body_is_409_and_creates_nothing(
    stack: Stack, redis_server: RedisServer
) -> None:
    key = uuid.uuid4().hex
    assert _post(stack.url, "/v1/jobs", key, ("a.jpg", jpeg(3, (96, 96)))).status_code == 202
    before = _jobs_in(redis_server)
    for other in (
        _post(stack.url, "/v1/jobs", key, ("a.jpg", jpeg(4, (96, 96)))),  # other bytes
        _post(stack.url, "/v1/jobs", key, ("a.jpg", jpeg(3, (96, 96))), top_k=2),  # params
    ):
        assert other.status_code == 409, other.text
        assert error_code(other) == "idempotency_conflict"
    assert _jobs_in(redis_server) == before


def test_key_length_is_checked(stack: Stack) -> None:
    image = ("a.jpg", jpeg(5, (96, 96)))
    too_long = _post(stack.url, "/v1/jobs", "k" * 201, image)
    assert too_long.status_code == 422
    assert error_code(too_long) == "validation_error"
    assert "Idempotency-Key" in too_long.json()["error"]["message"]
    assert _post(stack.url, "/v1/jobs", "k" * 199 + uuid.uuid4().hex[:1], image).status_code == 202


def test_predict_retry_answers_with_the_first_jobs(stack: Stack, redis_server: RedisServer) -> None:
    key = uuid.uuid4().hex
    image = ("p.jpg", jpeg(6, (96, 96)))
    before = _jobs_in(redis_server)
    first = _post(stack.url, "/v1/predict", key, image)
    assert first.status_code == 200, first.text
    again = _post(stack.url, "/v1/predict", key, image)
    assert again.status_code == 200, again.text
    assert _ids(again) == _ids(first)
    assert again.json()["predictions"][0]["top_k"] == first.json()["predictions"][0]["top_k"]
    assert _jobs_in(redis_server) - before == 1


def test_batches_and_batch_files_are_idempotent(stack: Stack, redis_server: RedisServer) -> None:
    key = uuid.uuid4().hex
    image = ("b.jpg", jpeg(7, (96, 96)))
    before = _jobs_in(redis_server)
    created = _post(stack.url, "/v1/batches", key, image)
    assert created.status_code == 201, created.text
    again = _post(stack.url, "/v1/batches", key, image)
    assert again.status_code == 201, again.text
    batch_id = created.json()["batch_id"]
    assert again.json()["batch_id"] == batch_id
    assert _jobs_in(redis_server) - before == 1

    path = f"/v1/batches/{batch_id}/files"
    add_key = uuid.uuid4().hex
    more = [("c.jpg", jpeg(8, (96, 96))), ("d.jpg", jpeg(9, (96, 96)))]
    added = _post(stack.url, path, add_key, *more)
    assert added.status_code == 200, added.text
    assert added.json()["total"] == 3
    repeated = _post(stack.url, path, add_key, *more)
    assert repeated.status_code == 200, repeated.text
    assert repeated.json()["total"] == 3  # nothing added twice
    assert _jobs_in(redis_server) - before == 3
    # Keys are scoped per route: the batch's key on /v1/jobs is a new request.
    assert _post(stack.url, "/v1/jobs", key, image).status_code == 202
    assert _jobs_in(redis_server) - before == 4


def test_concurrent_requests_with_one_key_make_one_set_of_jobs(
    stack: Stack, redis_server: RedisServer
) -> None:
    key = uuid.uuid4().hex
    images = [(f"{i}.jpg", jpeg(20 + i, (96, 96))) for i in range(3)]
    senders = 8
    barrier = threading.Barrier(senders)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        resp = _post(stack.url, "/v1/jobs", key, *images)
        with lock:
            answers.append(resp)

    before = _jobs_in(redis_server)
    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [a.status_code for a in answers] == [202] * senders, [a.text for a in answers]
    assert len({tuple(_ids(a)) for a in answers}) == 1
    assert _jobs_in(redis_server) - before == len(images)


class _LoseFirstAnswer(httpx.BaseTransport):
    """Forwards every request to the real API, but loses the answer of the first POST, as a
    read timeout after the server did the work would."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self._inner.handle_request(request)
        if request.method == "POST":
            self.keys.append(request.headers.get("idempotency-key"))
            if len(self.keys) == 1:
                resp.read()
                raise httpx.ReadTimeout("answer lost", request=request)
        return resp


def test_client_retries_a_lost_answer_with_the_same_key(
    stack: Stack, redis_server: RedisServer
) -> None:
    transport = _LoseFirstAnswer()
    before = _jobs_in(redis_server)
    with Client(stack.url, transport=transport) as client:
        refs = client.submit([("r.jpg", jpeg(30, (96, 96)))], model=TEST_MODEL)
        assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1]
        assert transport.keys[0] is not None
        client.submit([("s.jpg", jpeg(31, (96, 96)))], model=TEST_MODEL)
        assert transport.keys[2] != transport.keys[0]  # one key per call, not per client
    assert _jobs_in(redis_server) - before == 2
    assert wait_jobs(stack.url, [refs[0].job_id])[0]["status"] == "succeeded"


@pytest.fixture()
def keyed_api(redis_server: RedisServer, models_file: Path, tmp_path: Path) -> Iterator[Stack]:
    """A second API on the shared Redis with two API keys (the shared worker serves it)."""
    env = stack_env(models_file, VISIONQ_API_KEYS=f"{KEY_A},{KEY_B}")
    api = Stack(redis_server.url, tmp_path, env)
    try:
        api.start_api()
        yield api
    finally:
        api.stop_all()


def test_keys_are_scoped_per_api_key(keyed_api: Stack, redis_server: RedisServer) -> None:
    key = uuid.uuid4().hex
    image = files(("s.jpg", jpeg(40, (96, 96))))

    def post(api_key: str) -> list[str]:
        headers = {"Idempotency-Key": key, "Authorization": f"Bearer {api_key}"}
        resp = httpx.post(
            f"{keyed_api.url}/v1/jobs",
            files=image,
            data={"model": TEST_MODEL},
            headers=headers,
            timeout=30,
        )
        assert resp.status_code == 202, resp.text
        return _ids(resp)

    before = _jobs_in(redis_server)
    first_a = post(KEY_A)
    assert post(KEY_A) == first_a
    assert post(KEY_B) != first_a  # another tenant's key never sees A's jobs
    assert _jobs_in(redis_server) - before == 2
