"""HTTP routes: thin wrappers that parse, call the serving layer and return its response."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ggufworker.server import serving_extras
from ggufworker.server.errors import retry_headers
from ggufworker.server.openapi import Responses, event_stream_ok, openai_errors
from ggufworker.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ExecuteRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
)
from ggufworker.server.sse import sse_response
from ggufworker.server.worker import execute_events

public = APIRouter()
router = APIRouter()  # API keys are checked by APIKeyMiddleware (all but /health)

# What each route answers besides 200; server-wide statuses (400 on validation, 401, 413, 500)
# are added to every route by ggufworker.server.openapi.
_GENERATION = openai_errors(400, 404, 429, 500, 503) | event_stream_ok()
_MODEL_CALL = openai_errors(400, 404, 500, 503)
_HEALTH: Responses = {
    503: {
        "description": "start-up models still loading, or one of them failed (Retry-After)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


@public.get("/health", summary="503 while loading, 200 when ready (no auth)", responses=_HEALTH)
async def health(request: Request) -> JSONResponse:
    status, body = serving_extras.health(request.app.state.manager)
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


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return serving_extras.list_models(request.app.state.manager)


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=openai_errors(404))
async def get_model(model_id: str, request: Request) -> Any:
    manager = request.app.state.manager
    for card in serving_extras.list_models(manager).data:
        if card.id == model_id:
            return card
    manager.lookup(model_id)  # raises model_not_found
    return None  # pragma: no cover


@router.post("/v1/chat/completions", responses=_GENERATION)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await request.app.state.chat.chat(body, request)


@router.post("/v1/completions", responses=_GENERATION)
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await request.app.state.completion.completion(body, request)


@router.post("/v1/embeddings", responses=_MODEL_CALL)
async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
    return await serving_extras.embeddings(request.app.state.manager, body)


@router.post("/tokenize", responses=_MODEL_CALL)
async def tokenize(body: TokenizeRequest, request: Request) -> Any:
    return await serving_extras.tokenize(request.app.state.manager, body)


@router.post("/detokenize", responses=_MODEL_CALL)
async def detokenize(body: DetokenizeRequest, request: Request) -> Any:
    return await serving_extras.detokenize(request.app.state.manager, body)


@router.post(
    "/execute",
    summary="worker API: run one job, stream worker events",
    responses=openai_errors(400, 404, 429, 500, 503)
    | event_stream_ok("worker events as server-sent events"),
    response_class=StreamingResponse,
)
async def execute(body: ExecuteRequest, request: Request) -> Response:
    state = request.app.state
    events = await execute_events(body, state.manager, state.metrics)
    return sse_response(events, done=False)
