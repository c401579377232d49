"""Server-sent events as OpenAI streams them (``data: {json}`` events, then ``data: [DONE]``),
and the error envelopes every HTTP error is written in.

Which envelope an error gets depends on the API its path belongs to, decided here once
(:func:`error_body`): Anthropic's ``{"type": "error", "error": {"type", "message"}}`` under
``/v1/messages``, OpenAI's ``{"error": {"message", "type", "param", "code"}}`` elsewhere. The
app's exception handlers and the middleware below FastAPI (API keys, body limit) all call it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from ggufworker.errors import error_spec

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(payload: Any) -> bytes:
    """One SSE ``data:`` event holding a JSON value."""
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n\n"
    )


#: path prefixes of the Anthropic Messages API (their errors use Anthropic's envelope)
ANTHROPIC_PATHS = ("/v1/messages",)

#: HTTP status -> Anthropic's error type (other 4xx: invalid_request_error, 5xx: api_error)
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str | None) -> bool:
    """``path`` belongs to the Anthropic Messages API."""
    if not path:
        return False
    return any(path == prefix or path.startswith(prefix + "/") for prefix in ANTHROPIC_PATHS)


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    default = "api_error" if status >= 500 else "invalid_request_error"
    return ANTHROPIC_ERROR_TYPES.get(status, default)


def error_body(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None,
    param: str | None = None,
    path: str | None = None,
) -> dict[str, Any]:
    """The error envelope of the API that ``path`` belongs to.

    Args:
        status: the HTTP status of the answer.
        message: what went wrong, for people.
        type_, code, param: OpenAI's error type, code and the field at fault.
        path: the request path (None: OpenAI's envelope).

    Returns:
        Anthropic's ``{"type": "error", "error": {"type", "message"}}`` (its type derived from
        ``status``) under ``/v1/messages``; OpenAI's ``{"error": {...}}`` elsewhere.
    """
    if is_anthropic_path(path):
        return {
            "type": "error",
            "error": {"type": anthropic_error_type(status), "message": message},
        }
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_payload(exc: BaseException, path: str | None = None) -> dict[str, Any]:
    """The error envelope for an exception (classified by the errors table) on ``path``."""
    spec = error_spec(exc)
    known = spec.code != "internal_error"
    return error_body(
        spec.status,
        str(exc) if known else "internal server error",
        type_=spec.type,
        code=spec.code,
        param=getattr(exc, "param", None),
        path=path,
    )


async def send_asgi_error(
    send: Any,
    exc: BaseException,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    *,
    path: str | None = None,
) -> None:
    """Answer a raw ASGI request on ``path`` with its error envelope (for middleware below
    FastAPI)."""
    body = json.dumps(error_payload(exc, path)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error_spec(exc).status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def guarded(events: AsyncIterator[bytes], *, done: bool = True) -> AsyncIterator[bytes]:
    """Pass events through; a failure mid-stream becomes an error event (then ``[DONE]``).

    Client disconnects arrive as cancellation and propagate, so producers' ``finally`` blocks
    cancel their engine requests.
    """
    try:
        async for chunk in events:
            yield chunk
    except Exception as exc:
        if error_spec(exc).code == "internal_error":
            logger.exception("stream failed")
        else:
            logger.warning("stream failed: %s", exc)
        yield sse_event(error_payload(exc))
    if done:
        yield DONE


def sse_response(events: AsyncIterator[bytes], *, done: bool = True) -> StreamingResponse:
    """A streaming response of SSE events with error handling."""
    return StreamingResponse(
        guarded(events, done=done), media_type="text/event-stream", headers=SSE_HEADERS
    )
