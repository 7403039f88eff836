"""Dependencies of the routes: the process state and the API-key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from services.api.state import ApiState
from services.common.errors import Unauthorized


def get_state(request: Request) -> ApiState:
    """The ApiState created in the lifespan."""
    state: ApiState = request.app.state.visionq
    return state


StateDep = Annotated[ApiState, Depends(get_state)]


def require_api_key(request: Request, state: StateDep) -> None:
    """401 unless a configured key is given as Bearer token or X-API-Key (constant time)."""
    keys = state.settings.api_keys
    if not keys:
        return
    given = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    ok = False
    for key in keys:
        # Compare against every key so the time taken does not tell which one nearly matched.
        ok |= secrets.compare_digest(given.encode(), key.encode())
    if not ok:
        exc = Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
        exc.headers = {"WWW-Authenticate": 'Bearer realm="visionq"'}
        raise exc


AuthDep = Depends(require_api_key)
