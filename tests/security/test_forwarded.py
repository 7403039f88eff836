"""Behind a proxy the rate limit keys on the real client, and only a trusted proxy says who.

The API runs with keys off (so each client address has its own bucket), a low limit and the
default ``VISIONQ_FORWARDED_ALLOW_IPS`` (127.0.0.1 and ::1). Requests come from two loopback
addresses: 127.0.0.1, an allowed proxy, and 127.0.0.2, a peer that is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.redis_server import free_port
from tests.conftest import TEST_MODEL
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.stack import Stack
from tests.security.conftest import SecureRedis

pytestmark = pytest.mark.integration

LIMIT = 3


@pytest.fixture(scope="module")
def open_limited_api(
    secure_redis: SecureRedis, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """An API without keys and with a per-address limit; no worker is needed."""
    env = stack_env(models_file, VISIONQ_RATE_LIMIT_PER_MINUTE=str(LIMIT))
    s = Stack(secure_redis.url, tmp_path_factory.mktemp("forwarded"), env)
    s.api_port = free_port()
    try:
        s.start_api()
        yield s
    finally:
        s.stop_all()


def _statuses(url: str, source: str, forwarded: list[str]) -> list[int]:
    """Status of GET /v1/models from ``source``, one per X-Forwarded-For value."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, transport=transport, timeout=30) as client:
        return [
            client.get("/v1/models", headers={"X-Forwarded-For": xff}).status_code
            for xff in forwarded
        ]


def test_allowed_proxy_gives_each_forwarded_client_its_bucket(open_limited_api: Stack) -> None:
    url = open_limited_api.url
    # One real client behind the proxy uses up its own bucket ...
    assert _statuses(url, "127.0.0.1", ["203.0.113.7"] * (LIMIT + 1)) == [200] * LIMIT + [429]
    # ... another one behind the same proxy is not held back by it ...
    assert _statuses(url, "127.0.0.1", ["203.0.113.8"]) == [200]
    # ... and the rightmost untrusted hop counts: a client cannot prepend its way out.
    assert _statuses(url, "127.0.0.1", ["198.51.100.1, 203.0.113.7"]) == [429]


def test_untrusted_peer_cannot_choose_its_bucket(open_limited_api: Stack) -> None:
    # 127.0.0.2 is not a listed proxy: its X-Forwarded-For is ignored, so a fresh value per
    # request does not buy fresh buckets; the peer's own address is the key.
    spoofed = [f"192.0.2.{i}" for i in range(LIMIT + 1)]
    assert _statuses(open_limited_api.url, "127.0.0.2", spoofed) == [200] * LIMIT + [429]
    # The proxy's clients do not share that bucket.
    assert _statuses(open_limited_api.url, "127.0.0.1", ["192.0.2.200"]) == [200]


def test_status_urls_follow_the_proxys_scheme_only_from_an_allowed_peer(
    open_limited_api: Stack,
) -> None:
    headers = {"X-Forwarded-For": "203.0.113.50", "X-Forwarded-Proto": "https"}
    files = {"file": ("cat.jpg", jpeg(9, (32, 32)), "image/jpeg")}
    urls = {}
    # 127.0.0.3: another peer that is not listed, with a bucket no other test used.
    for source in ("127.0.0.1", "127.0.0.3"):
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(base_url=open_limited_api.url, transport=transport) as client:
            r = client.post("/v1/jobs", files=files, data={"model": TEST_MODEL}, headers=headers)
        assert r.status_code == 202, r.text
        urls[source] = r.json()["jobs"][0]["status_url"]
    # The TLS-terminating proxy's clients get https links; a stranger's header changes nothing.
    assert urls["127.0.0.1"].startswith("https://")
    assert urls["127.0.0.3"].startswith("http://")
