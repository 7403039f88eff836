"""Dependencies of the routes: the process state, the API-key check and the rate limit."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, Request

from services.api.ratelimit import RateLimiter, client_id
from services.api.state import ApiState
from services.common.errors import Unauthorized


def get_state(request: Request) -> ApiState:
    """The ApiState created in the lifespan."""
    state: ApiState = request.app.state.visionq
    return state


StateDep = Annotated[ApiState, Depends(get_state)]


def presented_key(request: Request) -> str:
    """The key the client sent: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def key_matches(given: str, digests: tuple[bytes, ...]) -> bool:
    """True when sha256(given) is one of ``digests``, in time independent of which one."""
    digest = hashlib.sha256(given.encode()).digest()
    ok = False
    for allowed in digests:
        # Compare against every digest so the time taken does not tell which one matched.
        ok |= secrets.compare_digest(digest, allowed)
    return ok


def require_api_key(request: Request, state: StateDep) -> bytes | None:
    """401 unless a configured key is given; the key's digest, or None when keys are off."""
    digests = state.settings.key_digests
    if not digests:
        return None
    given = presented_key(request)
    if not key_matches(given, digests):
        exc = Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
        exc.headers = {"WWW-Authenticate": 'Bearer realm="visionq"'}
        raise exc
    return hashlib.sha256(given.encode()).digest()


KeyDep = Annotated[bytes | None, Depends(require_api_key)]


async def require_access(request: Request, key: KeyDep) -> None:
    """The key check, then one request from the key's rate-limit bucket (when limits are on)."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    address = request.client.host if request.client else ""
    await limiter.check(client_id(key, address))


AuthDep = Depends(require_access)
