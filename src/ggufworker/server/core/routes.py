"""Lifecycle routes every surface shares: ``/health`` (no auth) and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ggufworker.server.core.errors import retry_headers
from ggufworker.server.core.models import ModelManager
from ggufworker.server.core.openapi import Responses

public = APIRouter()
router = APIRouter()  # API keys are checked by APIKeyMiddleware (all but /health)

_HEALTH: Responses = {
    503: {
        "description": "start-up models still loading, or one of them failed (Retry-After)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


def health_status(manager: ModelManager) -> tuple[int, dict[str, Any]]:
    """503 while the start-up models load (or failed to), 200 once the server can answer."""
    models = {m.spec.name: m.state for m in manager.all_models()}
    if not manager.startup_done.is_set():
        return 503, {"status": "loading", "models": models}
    if manager.startup_error:
        return 503, {"status": "error", "error": manager.startup_error, "models": models}
    return 200, {"status": "ok", "models": models}


@public.get("/health", summary="503 while loading, 200 when ready (no auth)", responses=_HEALTH)
async def health(request: Request) -> JSONResponse:
    status, body = health_status(request.app.state.manager)
    return JSONResponse(body, status_code=status, headers=retry_headers(status))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    data, content_type = request.app.state.metrics.render()
    return Response(data, media_type=content_type)
