"""Dependencies of the routes: the process state, the API-key check and the rate limit."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
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


# The two ways to present a key. auto_error is off because keys are optional
# (VISIONQ_API_KEYS) and a missing or wrong key must be our 401 body, not FastAPI's 403.
# They are not dependencies: FastAPI 0.163 spends ~20 us a request solving each one, so
# require_access calls them itself and ``document_key_schemes`` declares them in the
# OpenAPI document (so /docs offers "Authorize" and clients know what to send).
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
_SCHEMES = (_BEARER, _HEADER)


def document_key_schemes(schema: dict[str, Any], operations: set[tuple[str, str]]) -> None:
    """Declare the key schemes in an OpenAPI document and require one of them on each
    ``(path, method)`` of ``operations`` (what FastAPI writes for security dependencies)."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    for scheme in _SCHEMES:
        schemes[scheme.scheme_name] = jsonable_encoder(
            scheme.model, by_alias=True, exclude_none=True
        )
    for path, method in operations:
        operation = schema["paths"].get(path, {}).get(method)
        if operation is not None:
            operation["security"] = [{scheme.scheme_name: []} for scheme in _SCHEMES]


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


# One dependency, not a chain (key check -> state -> schemes): FastAPI 0.163 spends ~6 us
# of bookkeeping per dependency per request, more for a security scheme, and every /v1
# request runs this one.
async def require_access(request: Request) -> None:
    """The key check, then one request from the key's rate-limit bucket (when limits are on)."""
    bearer, header = await _BEARER(request), await _HEADER(request)
    key = api_key_digest(api_state(request).key_digests, bearer, header)
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    address = request.client.host if request.client else ""
    await limiter.check(client_id(key, address))


AuthDep = Depends(require_access)
