"""HTTP routes: thin wrappers that parse, call the serving layer and return its response."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ggufworker.server import serving_extras
from ggufworker.server.errors import retry_headers
from ggufworker.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ExecuteRequest,
    ModelList,
    TokenizeRequest,
)
from ggufworker.server.sse import sse_response
from ggufworker.server.worker import execute_events

public = APIRouter()
router = APIRouter()  # API keys are checked by APIKeyMiddleware (all but /health)


@public.get("/health", summary="503 while loading, 200 when ready (no auth)")
async def health(request: Request) -> JSONResponse:
    status, body = serving_extras.health(request.app.state.manager)
    return JSONResponse(body, status_code=status, headers=retry_headers(status))


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    data, content_type = request.app.state.metrics.render()
    return Response(data, media_type=content_type)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return serving_extras.list_models(request.app.state.manager)


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Any:
    manager = request.app.state.manager
    for card in serving_extras.list_models(manager).data:
        if card.id == model_id:
            return card
    manager.lookup(model_id)  # raises model_not_found
    return None  # pragma: no cover


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await request.app.state.chat.chat(body, request)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await request.app.state.completion.completion(body, request)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
    return await serving_extras.embeddings(request.app.state.manager, body)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> Any:
    return await serving_extras.tokenize(request.app.state.manager, body)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> Any:
    return await serving_extras.detokenize(request.app.state.manager, body)


@router.post("/execute", summary="worker API: run one job, stream worker events")
async def execute(body: ExecuteRequest, request: Request) -> Response:
    state = request.app.state
    events = await execute_events(body, state.manager, state.metrics)
    return sse_response(events, done=False)
