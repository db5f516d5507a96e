"""Every error becomes ``{"error": {"code", "message", ...}}`` with its HTTP status.

Routes raise :class:`~facerec.errors.FaceRecError`; this module is the only place that
turns exceptions into responses.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from facerec.errors import FaceRecError
from gateway.errors import database_error

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    **details: Any,
) -> JSONResponse:
    """The JSON error; 401 says how to authenticate, and a ``retry_after`` detail (seconds)
    becomes ``Retry-After``."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(code).inc()
    body = {"error": {"code": code, "message": message, **details}}
    rid = getattr(request.state, "request_id", None)
    if rid:
        body["error"]["request_id"] = rid
    out = dict(headers or {})
    if status == 401:
        out["WWW-Authenticate"] = "Bearer"
    if details.get("retry_after") is not None:
        out["Retry-After"] = str(details["retry_after"])
    return JSONResponse(body, status_code=status, headers=out or None)


def _jsonable(errors: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(FaceRecError)
    async def _domain(request: Request, exc: FaceRecError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("%s: %s", exc.code, exc.message)
        return error_response(request, exc.http_status, exc.code, exc.message, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable(list(exc.errors()))
        if any(e["type"] == "json_invalid" for e in errors):
            return error_response(request, 400, "malformed_json", "the body is not valid JSON")
        return error_response(
            request, 422, "invalid_request", "the request does not match the API", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or _HTTP_CODES.get(exc.status_code)
        return error_response(
            request,
            exc.status_code,
            code or f"http_{exc.status_code}",
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        error = database_error(exc)
        log.error("%s: %s", error.code, type(exc).__name__)
        return error_response(
            request, error.http_status, error.code, error.message, **error.details
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(request, 500, "internal_error", "an unexpected error occurred")
