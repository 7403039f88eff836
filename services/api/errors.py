"""One place maps every error to the contract's JSON shape and status code."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException

from services.common.errors import BrokerUnavailable, PayloadTooLarge, VisionqError

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

    app.add_exception_handler(VisionqError, on_visionq)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(redis.ConnectionError, on_broker)
    app.add_exception_handler(redis.TimeoutError, on_broker)
    app.add_exception_handler(OperationalError, on_broker)
