"""Every HTTP error in its API's envelope: OpenAI's ``{"error": {"message", "type", "param",
"code"}}``, or Anthropic's under ``/v1/messages`` (chosen by path in ``core/sse.py``).

Typed exceptions are classified by :func:`ggufworker.errors.error_spec`; validation errors are
400 (not FastAPI's 422 body); unknown routes keep their status; anything unexpected is a 500
with no traceback in the body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ggufworker.errors import GGUFWorkerError, error_spec
from ggufworker.server.core.sse import error_body, error_payload

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
_RETRY_STATUSES = {429, 503}


def retry_headers(status: int, headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """``headers`` plus ``Retry-After`` when ``status`` asks the client to come back later."""
    if status in _RETRY_STATUSES:
        return {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return headers


def envelope(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    path: str | None = None,
) -> JSONResponse:
    """An error response in the envelope of the API ``path`` belongs to (default OpenAI's)."""
    body = error_body(status, message, type_=type_, code=code, param=param, path=path)
    return JSONResponse(body, status_code=status, headers=retry_headers(status, headers))


def error_response(exc: BaseException, path: str | None = None) -> JSONResponse:
    """The response for an exception, classified by the errors table."""
    status = error_spec(exc).status
    body = error_payload(exc, path)
    return JSONResponse(body, status_code=status, headers=retry_headers(status))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors: list[Any] = list(exc.errors())
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


def install_error_handlers(app: FastAPI) -> None:
    """Register the exception handlers that produce the envelope."""

    @app.exception_handler(GGUFWorkerError)
    async def _typed(request: Request, exc: GGUFWorkerError) -> JSONResponse:
        if error_spec(exc).status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return envelope(
            400,
            message,
            type_="invalid_request_error",
            code="invalid_value",
            param=param,
            path=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return envelope(
            exc.status_code,
            str(exc.detail),
            type_=type_,
            code=code,
            headers=getattr(exc, "headers", None),
            path=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return envelope(
            500,
            "internal server error",
            type_="server_error",
            code="internal_error",
            path=request.url.path,
        )
