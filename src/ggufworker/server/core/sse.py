"""Server-sent events as OpenAI streams them: ``data: {json}`` events, then ``data: [DONE]``."""

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


def error_payload(exc: BaseException) -> dict[str, Any]:
    """OpenAI's error envelope for an exception, classified by the errors table."""
    spec = error_spec(exc)
    known = spec.code != "internal_error"
    return {
        "error": {
            "message": str(exc) if known else "internal server error",
            "type": spec.type,
            "param": getattr(exc, "param", None),
            "code": spec.code,
        }
    }


async def send_asgi_error(
    send: Any, exc: BaseException, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """Answer a raw ASGI request with the error envelope (for middleware below FastAPI)."""
    body = json.dumps(error_payload(exc)).encode()
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
