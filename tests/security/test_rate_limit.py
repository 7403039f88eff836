"""The per-key rate limit on a real Redis, then over HTTP on an API of two processes that
share one budget and serve /metrics on one separate port.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from services.api.ratelimit import RateLimiter, client_id
from services.common.errors import RateLimited
from services.common.redis_server import free_port
from tests.integration.conftest import stack_env
from tests.integration.stack import Stack
from tests.security.conftest import KEY, OTHER_KEY, SecureRedis

pytestmark = pytest.mark.integration

LIMIT = 4


def _check(url: str, per_minute: int, bucket: str, times: int) -> list[int]:
    """Retry-After of each of ``times`` requests (0 when allowed)."""

    async def run() -> list[int]:
        client = aioredis.Redis.from_url(url)
        limiter = RateLimiter(client, per_minute)
        out = []
        for _ in range(times):
            try:
                await limiter.check(bucket)
                out.append(0)
            except RateLimited as exc:
                out.append(int(exc.headers["Retry-After"]))
        await client.aclose()
        return out

    return asyncio.run(run())


def test_bucket_allows_the_limit_then_refuses_with_retry_after(secure_redis: SecureRedis) -> None:
    bucket = client_id(b"unit-bucket-" + str(time.time()).encode(), "")
    assert _check(secure_redis.url, 6, bucket, 8) == [0] * 6 + [10, 10]  # 60 s / 6 = 10 s
    # Another key has its own bucket.
    assert _check(secure_redis.url, 6, bucket + "x", 1) == [0]


def test_bucket_refills_at_the_rate(secure_redis: SecureRedis) -> None:
    bucket = client_id(b"refill-" + str(time.time()).encode(), "")
    per_minute = 60  # one token a second
    drained = _check(secure_redis.url, per_minute, bucket, per_minute + 5)
    assert drained.count(0) >= per_minute and drained[-1] == 1  # empty now: wait ~1 s
    time.sleep(1.1)
    assert _check(secure_redis.url, per_minute, bucket, 2) == [0, 1]  # one token came back


@pytest.fixture(scope="module")
def limited_api(
    secure_redis: SecureRedis, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """`visionq api --workers 2`: plaintext keys, a low limit, metrics on a separate port."""
    tmp = tmp_path_factory.mktemp("limited")
    metrics_port = free_port()
    env = stack_env(
        models_file,
        VISIONQ_API_KEYS=f"{KEY},{OTHER_KEY}",
        VISIONQ_RATE_LIMIT_PER_MINUTE=str(LIMIT),
        VISIONQ_METRICS_BIND=f"127.0.0.1:{metrics_port}",
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "prom"),
    )
    s = Stack(secure_redis.url, tmp, env)
    s.api_port = free_port()
    s.worker_metrics_port = metrics_port
    try:
        args = ["api", "--host", "127.0.0.1", "--port", str(s.api_port), "--workers", "2"]
        proc = s._spawn("api", args)
        s._wait(lambda: s._get("/healthz") == 200, proc, "API /healthz")
        yield s
    finally:
        s.stop_all()


def test_key_over_its_limit_gets_429_rate_limited(limited_api: Stack) -> None:
    url = f"{limited_api.url}/v1/models"
    with httpx.Client(timeout=30) as client:
        for _ in range(3):  # refusals for a bad key use no one's budget
            assert client.get(url, headers={"X-API-Key": "wrong-key-0123456789"}).status_code == 401
        # New connections each time: the two API processes share the budget through Redis.
        codes = [
            httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code
            for _ in range(LIMIT + 2)
        ]
        assert codes == [200] * LIMIT + [429, 429]
        resp = client.get(url, headers={"Authorization": f"Bearer {KEY}"})
        assert resp.status_code == 429
        assert resp.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["retry-after"]) <= 60 // LIMIT
        assert resp.json()["error"]["retry_after_s"] == int(resp.headers["retry-after"])
        # The other key's bucket is untouched.
        assert client.get(url, headers={"X-API-Key": OTHER_KEY}).status_code == 200
        # Health routes are neither keyed nor limited.
        assert client.get(f"{limited_api.url}/healthz").status_code == 200


def test_metrics_port_merges_both_api_processes(limited_api: Stack) -> None:
    for _ in range(20):  # new connections, spread over both processes
        assert httpx.get(f"{limited_api.url}/healthz", timeout=30).status_code == 200
    assert httpx.get(f"{limited_api.url}/metrics", timeout=30).status_code == 404
    side = f"http://127.0.0.1:{limited_api.worker_metrics_port}/metrics"
    counts = set()
    for _ in range(6):  # whichever process answers, it reports every process's requests
        text = httpx.get(side, timeout=30).text
        found = re.search(
            r'visionq_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)',
            text,
        )
        assert found, text[:2000]
        counts.add(float(found.group(1)))
    (total,) = counts
    assert total >= 20
