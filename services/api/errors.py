"""One place maps every error to the contract's JSON shape and status code."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import BrokerUnavailable, PayloadTooLarge, StorageFull, VisionqError

logger = logging.getLogger(__name__)


def error_response(exc: VisionqError) -> JSONResponse:
    """``{"error": {"code", "message", ...details}}`` with the error's status and headers."""
    body = {"error": {"code": exc.code, "message": exc.message, **exc.details}}
    headers = dict(exc.headers)
    if isinstance(exc, PayloadTooLarge):
        # The rest of the body may still be on its way (or never end): uvicorn closes the
        # connection after this answer instead of reading and discarding it forever.
        headers["Connection"] = "close"
    return JSONResponse(body, status_code=exc.status, headers=headers or None)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def on_visionq(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, VisionqError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}"
        body = {"error": {"code": "validation_error", "message": message}}
        return JSONResponse(body, status_code=422)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_broker(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("redis unavailable: %s", exc)
        return error_response(BrokerUnavailable(f"the job broker (Redis) is unavailable: {exc}"))

    async def on_full(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("redis refused a write: %s", exc)
        return error_response(storage_full(request.app))

    app.add_exception_handler(VisionqError, on_visionq)
    app.add_exception_handler(redis.exceptions.OutOfMemoryError, on_full)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(redis.ConnectionError, on_broker)
    app.add_exception_handler(redis.TimeoutError, on_broker)
    app.add_exception_handler(OperationalError, on_broker)


def storage_full(app: ASGIApp) -> StorageFull:
    """503 storage_full with the configured Retry-After."""
    state = getattr(getattr(app, "state", None), "visionq", None)
    retry_after = state.settings.retry_after_s if state is not None else 2
    return StorageFull(
        "Redis refused a write: it reached its maxmemory; retry later", retry_after_s=retry_after
    )


class ErrorShieldMiddleware:
    """Answer any exception that escaped the routes and middlewares with the JSON contract.

    Starlette's outermost handler would answer a plain-text 500 and re-raise, and uvicorn then
    closes the keep-alive connection, so the client's next request fails too. Here the error
    is logged and answered (503 for Redis refusing writes or being away, else 500), and the
    connection stays usable. An error after the answer started cannot be answered: re-raised.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            error: VisionqError
            if isinstance(exc, redis.exceptions.OutOfMemoryError):
                logger.warning("redis refused a write: %s", exc)
                error = storage_full(scope["app"])
            elif isinstance(exc, redis.ConnectionError | redis.TimeoutError | OperationalError):
                logger.warning("redis unavailable: %s", exc)
                error = BrokerUnavailable(f"the job broker (Redis) is unavailable: {exc}")
            else:
                logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
                error = VisionqError("internal error; the server log has the details")
            await error_response(error)(scope, receive, send)
