"""API keys: optional authentication, several keys allowed, compared in constant time.

A key comes as ``Authorization: Bearer <key>`` (OpenAI's clients) or ``x-api-key: <key>``
(Anthropic's clients); either is accepted on every path.

Checked in ASGI middleware, before the body is read or parsed: a client without a valid key
learns nothing about the request format and cannot make the server parse large bodies.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ggufworker.errors import AuthenticationError
from ggufworker.server.core.sse import send_asgi_error

# "/" and the web page (/ui and its files) are public: the page asks for the key itself and
# sends it with every API call; "/" answers only Ollama's liveness text or a redirect to /ui.
PUBLIC_PATHS = frozenset({"/health", "/", "/ui"})
PUBLIC_PREFIXES = ("/ui/",)


def is_public(path: str | None) -> bool:
    """``path`` is answered without an API key."""
    return path is not None and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))


def check_api_key(keys: list[str], authorization: str | None, api_key: str | None = None) -> None:
    """Accept the request when no keys are configured or its Bearer token or ``x-api-key``
    is one of them.

    Every configured key is compared with every given credential (no early exit), each with
    ``hmac.compare_digest``.

    Raises:
        AuthenticationError: keys are configured and both headers are missing or wrong.
    """
    if not keys:
        return
    given: list[bytes] = []
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        given.append(token.strip().encode())
    if api_key and api_key.strip():
        given.append(api_key.strip().encode())
    if not given:
        raise AuthenticationError(
            "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
        )
    matched = False
    for credential in given:
        for key in keys:
            matched |= hmac.compare_digest(credential, key.encode())
    if not matched:
        raise AuthenticationError("invalid API key")


class APIKeyMiddleware:
    """401 for every HTTP request without a valid key, except public paths and CORS preflights."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.keys
            or is_public(scope.get("path"))
            or scope.get("method") == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            check_api_key(self.keys, headers.get("authorization"), headers.get("x-api-key"))
        except AuthenticationError as exc:
            challenge = ((b"www-authenticate", b"Bearer"),)
            await send_asgi_error(send, exc, challenge, path=scope.get("path"))
            return
        await self.app(scope, receive, send)
