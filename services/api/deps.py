"""Dependencies of the routes: the process state, the API-key check and the rate limit."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.api.ratelimit import RateLimiter, client_id
from services.api.state import ApiState
from services.common.errors import Unauthorized


def api_state(request: Request) -> ApiState:
    """The ApiState created in the lifespan (the submitting routes read it without
    a dependency: see ``require_access``)."""
    state: ApiState = request.app.state.visionq
    return state


# The dependencies are coroutines though they never wait: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hop per dependency per request.
async def get_state(request: Request) -> ApiState:
    """The ApiState created in the lifespan."""
    return api_state(request)


StateDep = Annotated[ApiState, Depends(get_state)]


# Declared as security schemes so /docs offers "Authorize" and clients know what to send;
# auto_error is off because keys are optional (VISIONQ_API_KEYS) and a missing or wrong key
# must be our 401 body, not FastAPI's 403.
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="Authorization: Bearer <key>, when VISIONQ_API_KEYS or _FILE is set",
)
_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description="X-API-Key: <key>, the same keys as bearer",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
HeaderDep = Annotated[str | None, Depends(_HEADER)]


def presented_key(bearer: HTTPAuthorizationCredentials | None, header: str | None) -> str:
    """The key the client sent: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
    if bearer is not None:
        return bearer.credentials.strip()
    return (header or "").strip()


def key_matches(given: str, digests: tuple[bytes, ...]) -> bool:
    """True when sha256(given) is one of ``digests``, in time independent of which one."""
    digest = hashlib.sha256(given.encode()).digest()
    ok = False
    for allowed in digests:
        # Compare against every digest so the time taken does not tell which one matched.
        ok |= secrets.compare_digest(digest, allowed)
    return ok


def api_key_digest(
    digests: tuple[bytes, ...], bearer: HTTPAuthorizationCredentials | None, header: str | None
) -> bytes | None:
    """401 unless a key whose digest is one of ``digests`` is given; the key's digest, or
    None when keys are off (no digests)."""
    if not digests:
        return None
    given = presented_key(bearer, header)
    if not key_matches(given, digests):
        exc = Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
        exc.headers = {"WWW-Authenticate": 'Bearer realm="visionq"'}
        raise exc
    return hashlib.sha256(given.encode()).digest()


# One dependency, not a chain (key check -> state -> ...): FastAPI 0.163 spends ~6 us of
# bookkeeping per dependency per request, and every /v1 request runs this one.
async def require_access(request: Request, bearer: BearerDep, header: HeaderDep) -> None:
    """The key check, then one request from the key's rate-limit bucket (when limits are on)."""
    key = api_key_digest(api_state(request).key_digests, bearer, header)
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    address = request.client.host if request.client else ""
    await limiter.check(client_id(key, address))


AuthDep = Depends(require_access)
