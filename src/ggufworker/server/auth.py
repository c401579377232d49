"""API keys: optional Bearer authentication, several keys allowed, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from ggufworker.errors import AuthenticationError


def check_api_key(keys: list[str], authorization: str | None) -> None:
    """Accept the request when no keys are configured or its Bearer token is one of them.

    Every configured key is compared (no early exit), each with ``hmac.compare_digest``.

    Raises:
        AuthenticationError: keys are configured and the header is missing or wrong.
    """
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise AuthenticationError("invalid API key")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency guarding every route except /health."""
    check_api_key(request.app.state.settings.api_keys, request.headers.get("authorization"))
