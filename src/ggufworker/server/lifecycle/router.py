"""HTTP routes of the lifecycle API: thin wrappers over :mod:`.serving`.

Named as llama-server's router names them: ``GET /models``, ``POST /models/load``,
``POST /models/unload``, ``GET /models/sse``, ``GET /props``, ``GET /slots``. Errors are in
OpenAI's envelope (the app's handlers). API keys apply as on ``/v1``.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ggufworker.server.core.errors import envelope
from ggufworker.server.core.openapi import event_stream_ok, openai_errors
from ggufworker.server.core.sse import SSE_HEADERS
from ggufworker.server.lifecycle import serving
from ggufworker.server.lifecycle.protocol import (
    ActionResponse,
    LoadRequest,
    ModelListResponse,
    PropsResponse,
    SlotInfo,
    UnloadRequest,
)

router = APIRouter(tags=["lifecycle"])

_MODEL_QUERY = Query(
    default=None, description="served model name (default: the first generation model)"
)


@router.get(
    "/models",
    response_model=ModelListResponse,
    summary="every known model with its status: unloaded, downloading, loading or loaded",
)
async def list_models(request: Request) -> ModelListResponse:
    return await serving.list_models(request.app.state.manager)


@router.post(
    "/models/load",
    response_model=ActionResponse,
    responses=openai_errors(404),
    summary="load a model now (a registry model not served yet is pulled and served)",
)
async def load(body: LoadRequest, request: Request) -> ActionResponse:
    return await serving.load(request.app.state.manager, body)


@router.post(
    "/models/unload",
    response_model=ActionResponse,
    responses=openai_errors(404),
    summary="unload a model once its requests in flight have finished",
)
async def unload(body: UnloadRequest, request: Request) -> ActionResponse:
    return await serving.unload(request.app.state.manager, body)


@router.get(
    "/models/sse",
    response_class=StreamingResponse,
    responses=event_stream_ok(
        "one event per known model (a /models row), then one per status change while the "
        "client sends 'Accept: text/event-stream' (EventSource does); otherwise the stream "
        "ends after the first events"
    ),
    summary="model status events",
)
async def model_events(request: Request) -> StreamingResponse:
    follow = "text/event-stream" in request.headers.get("accept", "")
    events = serving.status_events(request.app.state.manager, follow=follow)
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


@router.get(
    "/props",
    response_model=PropsResponse,
    responses=openai_errors(404, 503),
    summary="a model's default settings, context, chat template and capabilities",
)
async def props(request: Request, model: str | None = _MODEL_QUERY) -> PropsResponse:
    return await serving.props(request.app.state.manager, model)


@router.get(
    "/slots",
    response_model=list[SlotInfo],
    responses=openai_errors(404, 503),
    summary="the sequence slots of a loaded model (none while it is not loaded)",
)
async def slots(
    request: Request,
    model: str | None = _MODEL_QUERY,
    fail_on_no_slot: bool = Query(
        default=False, description="answer 503 when no slot is idle (a load balancer's probe)"
    ),
) -> list[SlotInfo] | JSONResponse:
    rows = serving.slots(request.app.state.manager, model)
    if fail_on_no_slot and not any(not r.is_processing for r in rows):
        return envelope(
            503,
            "no idle slot" if rows else "the model is not loaded: it has no slots",
            type_="server_error",
            code="no_slot_available",
            path=request.url.path,
        )
    return rows
