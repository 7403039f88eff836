"""Redis with a password (and TLS): the stack uses it; a wrong password is a clear 503."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.stack import Stack
from tests.security.conftest import AUTH, KEY, SecureRedis

pytestmark = pytest.mark.integration

NO_RETRY = Retry(NoBackoff(), 0)  # a refusal is the answer under test, not a hiccup


def test_redis_refuses_clients_without_the_password(secure_redis: SecureRedis) -> None:
    plain = redis.Redis(
        host="127.0.0.1", port=secure_redis.server.port, socket_timeout=5, retry=NO_RETRY
    )
    with pytest.raises(redis.AuthenticationError):
        plain.ping()
    assert secure_redis.client().ping()


def test_the_stack_talks_tls_when_a_certificate_could_be_made(
    secure_redis: SecureRedis, secure_stack: Stack
) -> None:
    if not secure_redis.tls:
        pytest.skip("no openssl to make a certificate: the suite ran over plain redis://")
    assert secure_stack.redis_url.startswith("rediss://")
    assert int(secure_redis.client().info("clients")["connected_clients"]) > 1
    # The TLS port speaks only TLS: a plaintext client gets nowhere.
    port = int(secure_redis.url.split("@127.0.0.1:")[1].split("/")[0])
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, retry=NO_RETRY).ping()


@pytest.fixture(scope="module")
def wrong_password_api(
    secure_redis: SecureRedis, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """An API whose VISIONQ_REDIS_URL carries the wrong password."""
    url = secure_redis.url_with_password("not-the-password-123")
    s = Stack(url, tmp_path_factory.mktemp("wp"), stack_env(models_file, VISIONQ_API_KEYS=KEY))
    try:
        s.start_api()
        yield s
    finally:
        s.stop_all()


def test_wrong_password_is_503_broker_unavailable(wrong_password_api: Stack) -> None:
    url = wrong_password_api.url
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 503
    assert "password" in ready.json()["reason"].lower()
    start = time.monotonic()
    resp = httpx.post(
        f"{url}/v1/jobs",
        files=[("file", ("a.jpg", jpeg(32), "image/jpeg"))],
        data={"model": TEST_MODEL},
        headers=AUTH,
        timeout=30,
    )
    seconds = time.monotonic() - start
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "broker_unavailable"
    assert "password" in resp.json()["error"]["message"].lower()
    assert seconds < 5
    # The password never shows in what the API says or logs.
    assert "not-the-password-123" not in resp.text
    assert "not-the-password-123" not in wrong_password_api.logs()
