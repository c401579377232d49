"""API keys: optional Bearer authentication, several keys allowed, compared in constant time.

Checked in ASGI middleware, before the body is read or parsed: a client without a valid key
learns nothing about the request format and cannot make the server parse large bodies.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ggufworker.errors import AuthenticationError
from ggufworker.server.core.sse import send_asgi_error

PUBLIC_PATHS = frozenset({"/health"})


def check_api_key(keys: list[str], authorization: str | None) -> None:
    """Accept the request when no keys are configured or its Bearer token is one of them.

    Every configured key is compared (no early exit), each with ``hmac.compare_digest``.

    Raises:
        AuthenticationError: keys are configured and the header is missing or wrong.
    """
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise AuthenticationError("invalid API key")


class APIKeyMiddleware:
    """401 for every HTTP request without a valid key, except /health and CORS preflights."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.keys
            or scope.get("path") in PUBLIC_PATHS
            or scope.get("method") == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return
        try:
            check_api_key(self.keys, Headers(scope=scope).get("authorization"))
        except AuthenticationError as exc:
            await send_asgi_error(send, exc, ((b"www-authenticate", b"Bearer"),))
            return
        await self.app(scope, receive, send)
