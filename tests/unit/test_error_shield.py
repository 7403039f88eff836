"""Errors that escape routes and middlewares still get the JSON contract, never plain text."""

from __future__ import annotations

import asyncio

import httpx
import redis
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.errors import ErrorShieldMiddleware, install_error_handlers


class _Boom:
    """A middleware that fails before the routes run (as a Redis call in one could)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mw-oom":
            raise redis.exceptions.OutOfMemoryError("command not allowed when used memory")
        await self.app(scope, receive, send)


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/oom")
    async def oom() -> None:
        raise redis.exceptions.OutOfMemoryError("command not allowed when used memory")

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(_Boom)
    app.add_middleware(ErrorShieldMiddleware)
    return app


def test_every_escape_is_json() -> None:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [await client.get(p) for p in ("/oom", "/mw-oom", "/bug", "/ok")]

    oom, mw_oom, bug, ok = asyncio.run(go())
    for resp in (oom, mw_oom):
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "storage_full"
        assert int(resp.headers["retry-after"]) >= 1
    assert bug.status_code == 500
    assert bug.json()["error"]["code"] == "internal_error"
    assert "a bug" not in bug.text  # the details go to the log, not to the client
    assert ok.json() == {"ok": "yes"}
