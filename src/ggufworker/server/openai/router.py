"""HTTP routes of the OpenAI API (``/v1/*`` and the llama.cpp-style ``/tokenize``,
``/detokenize``): thin wrappers that parse, call the serving layer and return its response."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ggufworker.server.core.openapi import event_stream_ok, openai_errors
from ggufworker.server.openai import serving_extras
from ggufworker.server.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
)

router = APIRouter()  # API keys are checked by APIKeyMiddleware

# What each route answers besides 200; server-wide statuses (400 on validation, 401, 413, 500)
# are added to every route by ggufworker.server.core.openapi.
_GENERATION = openai_errors(400, 404, 429, 500, 503) | event_stream_ok()
_MODEL_CALL = openai_errors(400, 404, 500, 503)


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
