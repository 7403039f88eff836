"""The rate limiter's Python side: bucket names, Retry-After, the error it raises."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.api.ratelimit import KEY_PREFIX, RateLimiter, client_id
from services.common.errors import RateLimited


class FakeRedis:
    """Stands in for the client: the 'script' answers what the test says."""

    def __init__(self, answer: list[int]) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def register_script(self, source: str) -> Any:
        assert "TIME" in source  # the server's clock, not the API host's

        async def run(keys: list[str], args: list[float]) -> list[int]:
            self.calls.append({"keys": keys, "args": args})
            return self.answer

        return run


def test_client_id_is_stable_distinct_and_opaque() -> None:
    digest = b"\x01" * 32
    assert client_id(digest, "10.0.0.1") == client_id(digest, "10.0.0.2")  # keys beat addresses
    assert client_id(None, "10.0.0.1") != client_id(None, "10.0.0.2")
    assert client_id(None, "10.0.0.1") != client_id(digest, "10.0.0.1")
    assert "10.0.0.1" not in client_id(None, "10.0.0.1")
    assert len(client_id(digest, "")) == 32


def test_allowed_request_passes_interval_and_burst() -> None:
    fake = FakeRedis([1, 0])
    limiter = RateLimiter(fake, 30)  # type: ignore[arg-type]
    asyncio.run(limiter.check("abc"))
    (call,) = fake.calls
    assert call["keys"] == [KEY_PREFIX + "abc"]
    interval, tolerance = call["args"]
    assert interval == pytest.approx(2000.0)  # 60 s / 30
    assert tolerance == pytest.approx(2000.0 * 29)  # a full bucket of 30 at once


@pytest.mark.parametrize(("wait_ms", "retry_after"), [(1, 1), (999, 1), (1001, 2), (20000, 20)])
def test_refusal_is_429_rate_limited_with_retry_after(wait_ms: int, retry_after: int) -> None:
    limiter = RateLimiter(FakeRedis([0, wait_ms]), 3)  # type: ignore[arg-type]
    with pytest.raises(RateLimited) as info:
        asyncio.run(limiter.check("abc"))
    exc = info.value
    assert (exc.status, exc.code) == (429, "rate_limited")
    assert exc.headers == {"Retry-After": str(retry_after)}
    assert exc.details["retry_after_s"] == retry_after
    assert "VISIONQ_RATE_LIMIT_PER_MINUTE=3" in exc.message


def test_zero_is_not_a_limit() -> None:
    with pytest.raises(ValueError, match="per_minute"):
        RateLimiter(FakeRedis([1, 0]), 0)  # type: ignore[arg-type]
