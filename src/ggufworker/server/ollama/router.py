"""HTTP routes of the Ollama API (``/api/*`` and ``/``): thin wrappers over the serving layer.

They share the server, port, API keys, body limit and metrics with ``/v1``. Errors are sent as
Ollama sends them, ``{"error": "..."}`` with the status of the errors table, by the route class
below (validation errors are 400, like everywhere in this server).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ggufworker.errors import GGUFWorkerError, error_spec
from ggufworker.server.core.errors import retry_headers
from ggufworker.server.ollama import models as ollama_models
from ggufworker.server.ollama.protocol import (
    ChatRequest,
    CopyRequest,
    EmbeddingsRequest,
    EmbedRequest,
    ErrorResponse,
    GenerateRequest,
    ListResponse,
    ModelRequest,
    ProcessResponse,
    PullRequest,
    ShowResponse,
    StatusResponse,
    VersionResponse,
)
from ggufworker.server.ollama.serving import OllamaServing
from ggufworker.server.ollama.stream import ndjson_response

logger = logging.getLogger(__name__)

# The Ollama API level these routes implement (clients compare it with Ollama's releases).
OLLAMA_API_VERSION = "0.12.0"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "invalid request (bad JSON, bad field, unsupported feature)"),
        (404, "model not found"),
        (429, "every slot busy and the queue full"),
        (500, "internal error"),
        (503, "model loading or engine closed"),
    )
}
_NDJSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/x-ndjson": {}}, "description": "NDJSON chunks"}
}


def ollama_error(status: int, message: str) -> JSONResponse:
    """Ollama's error response."""
    return JSONResponse({"error": message}, status_code=status, headers=retry_headers(status))


def _validation_text(exc: RequestValidationError) -> str:
    errors = list(exc.errors())
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "invalid JSON in the request body"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    msg = first.get("msg", "invalid value")
    return f"{where}: {msg}" if where else str(msg)


def _as_json(request: Request) -> Request:
    """The request with its body read as JSON whatever its content type: Ollama's server does
    so, and its docs' ``curl -d '{...}'`` sends ``application/x-www-form-urlencoded``."""
    if request.method not in ("POST", "DELETE"):
        return request
    if "json" in request.headers.get("content-type", ""):
        return request
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
    return Request(scope, request.receive)


class OllamaRoute(APIRoute):
    """A route whose errors are ``{"error": "..."}`` (Ollama's shape), not OpenAI's envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(_as_json(request))
            except RequestValidationError as exc:
                return ollama_error(400, _validation_text(exc))
            except GGUFWorkerError as exc:
                status = error_spec(exc).status
                if status >= 500:
                    logger.error("%s %s failed: %s", request.method, request.url.path, exc)
                return ollama_error(status, str(exc))
            except HTTPException as exc:
                return ollama_error(exc.status_code, str(exc.detail))
            except Exception:
                logger.exception("%s %s failed", request.method, request.url.path)
                return ollama_error(500, "internal server error")

        return route


router = APIRouter(route_class=OllamaRoute, tags=["ollama"], responses=_ERRORS)


def _serving(request: Request) -> OllamaServing:
    state = request.app.state
    return OllamaServing(state.manager, state.metrics, state.settings)


@router.get(
    "/",
    summary="Ollama's liveness answer; browsers (Accept: text/html) go to the web page",
    response_class=Response,
    responses={
        200: {
            "description": "Ollama's liveness text",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        307: {"description": "a browser: redirected to the web chat page at /ui"},
    },
)
@router.head("/", include_in_schema=False)
async def root(request: Request) -> Response:
    # Ollama's clients send no text/html Accept and keep getting Ollama's answer
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/ui", status_code=307)
    return PlainTextResponse("Ollama is running")


@router.get("/api/version", response_model=VersionResponse)
@router.head("/api/version", include_in_schema=False)
async def version() -> VersionResponse:
    return VersionResponse(version=OLLAMA_API_VERSION)


@router.get("/api/tags", response_model=ListResponse)
@router.head("/api/tags", include_in_schema=False)
async def tags(request: Request) -> ListResponse:
    return await ollama_models.list_models(request.app.state.manager)


@router.post("/api/show", response_model=ShowResponse)
async def show(body: ModelRequest, request: Request) -> ShowResponse:
    return await ollama_models.show(request.app.state.manager, body.model, verbose=body.verbose)


@router.get("/api/ps", response_model=ProcessResponse)
async def ps(request: Request) -> ProcessResponse:
    return ollama_models.process_list(request.app.state.manager)


@router.post("/api/chat", responses=_NDJSON, summary="chat (NDJSON stream unless stream=false)")
async def chat(body: ChatRequest, request: Request) -> Response:
    return await _serving(request).chat(body, request)


@router.post("/api/generate", responses=_NDJSON, summary="completion, raw prompt or FIM")
async def generate(body: GenerateRequest, request: Request) -> Response:
    return await _serving(request).generate(body, request)


@router.post("/api/embed")
async def embed(body: EmbedRequest, request: Request) -> Any:
    return await _serving(request).embed(body)


@router.post("/api/embeddings", summary="legacy: one prompt, one embedding")
async def embeddings(body: EmbeddingsRequest, request: Request) -> Any:
    return await _serving(request).embeddings(body)


@router.post("/api/pull", responses=_NDJSON, summary="pull through the registry")
async def pull(body: PullRequest, request: Request) -> Response:
    manager = request.app.state.manager
    target = ollama_models.pull_target(manager, body.model)  # unknown names: 404 before streaming
    progress = ollama_models.pull(manager, body.model, target)
    if body.stream:
        return ndjson_response(progress)
    statuses = [line async for line in progress]
    return JSONResponse(StatusResponse(**statuses[-1]).model_dump(exclude_none=True))


# Ollama answers both with 200 and an empty body (no content type): documented so
_EMPTY_OK: dict[int | str, dict[str, Any]] = {200: {"description": "done; an empty body"}}


@router.delete(
    "/api/delete",
    summary="remove a model from the cache",
    response_class=Response,
    responses=_EMPTY_OK,
)
async def delete(body: ModelRequest, request: Request) -> Response:
    await ollama_models.delete(request.app.state.manager, body.model)
    return Response(status_code=200)


@router.post(
    "/api/copy",
    summary="serve a model under another name",
    response_class=Response,
    responses=_EMPTY_OK,
)
async def copy(body: CopyRequest, request: Request) -> Response:
    ollama_models.copy(request.app.state.manager, body.source, body.destination)
    return Response(status_code=200)
