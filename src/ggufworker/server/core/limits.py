"""Request body size limit, as ASGI middleware (covers chunked bodies, not only Content-Length)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ggufworker.errors import RequestTooLargeError
from ggufworker.server.core.sse import send_asgi_error


class BodyLimitMiddleware:
    """Reject bodies over ``max_bytes`` with 413 before the app parses them.

    The body is read up front (requests are small JSON documents), then replayed to the app;
    later ``receive`` calls go to the client so disconnects are still seen.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send, scope)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # client went away before sending the body: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(send, scope)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay: list[Message] = [
            {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        ]
        await self.app(scope, _replay(replay, receive), send)

    async def _reject(self, send: Send, scope: Scope) -> None:
        exc = RequestTooLargeError(f"request body exceeds {self.max_bytes} bytes")
        await send_asgi_error(send, exc, ((b"connection", b"close"),), path=scope.get("path"))


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
