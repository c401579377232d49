"""HTTP routes of the Anthropic Messages API (``/v1/messages``): thin wrappers over the serving
layer.

They share the server, port, API keys (``x-api-key`` or ``Authorization: Bearer``), body limit
and metrics with ``/v1``. Every error under ``/v1/messages`` (validation, unknown model, the
API-key and body-limit middleware) is written in Anthropic's envelope,
``{"type": "error", "error": {"type", "message"}}``, by the shared core, which picks the
envelope by path. ``anthropic-version`` and ``anthropic-beta`` headers are accepted and not
checked.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ggufworker.server.anthropic.protocol import (
    CountTokensRequest,
    CountTokensResponse,
    MessageCreateRequest,
    MessageResponse,
)
from ggufworker.server.anthropic.serving import MessagesServing
from ggufworker.server.core.openapi import Responses, anthropic_errors

router = APIRouter(tags=["anthropic"])  # API keys are checked by APIKeyMiddleware

# Server-wide statuses (400 on validation, 401, 413, 500) are added by core/openapi.py, in
# Anthropic's envelope for these paths.
_STREAM: Responses = {
    200: {
        "description": "the message; with stream=true, Anthropic's server-sent events",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "description": "one event: `event: <name>` (message_start, "
                    "content_block_start, ping, content_block_delta, content_block_stop, "
                    "message_delta, message_stop, or error) and `data: {json}`; no [DONE]",
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                    "required": ["event", "data"],
                }
            }
        },
    }
}


def _serving(request: Request) -> MessagesServing:
    return MessagesServing(request.app.state.pipeline)


@router.post(
    "/v1/messages",
    summary="Anthropic Messages: a message (or its events with stream=true)",
    response_model=MessageResponse,
    responses=anthropic_errors(400, 404, 429, 500, 503) | _STREAM,
)
async def create_message(body: MessageCreateRequest, request: Request) -> Response:
    return await _serving(request).create(body, request)


@router.post(
    "/v1/messages/count_tokens",
    summary="Anthropic Messages: the input tokens a request would take",
    response_model=CountTokensResponse,
    responses=anthropic_errors(400, 404, 500, 503)
    | {200: {"description": "every prompt token of the request, as create would count them"}},
)
async def count_tokens(body: CountTokensRequest, request: Request) -> Any:
    return await _serving(request).count_tokens(body)
