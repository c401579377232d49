"""HTTP routes of the OpenAI Responses API (``/v1/responses`` and its sub-routes): thin wrappers
that parse, call the serving layer (``app.state.responses``) and return its answer."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ggufworker.server.core.openapi import Responses, event_stream_ok, openai_errors
from ggufworker.server.openai.responses.objects import (
    DeletedResponse,
    InputItemList,
    InputTokensResponse,
    ResponseObject,
)
from ggufworker.server.openai.responses.protocol import InputTokensRequest, ResponsesRequest

router = APIRouter()  # API keys are checked by APIKeyMiddleware


def _created() -> Responses:
    ok = event_stream_ok(
        "the response (status queued with background=true); with stream=true, server-sent "
        "events `event: <type>` / `data: {json}` from response.created to response.completed, "
        "response.incomplete or response.failed (no [DONE])"
    )
    ok[200]["model"] = ResponseObject
    return ok


_NOT_FOUND = openai_errors(404)


@router.post("/v1/responses", responses=openai_errors(400, 404, 429, 500, 503) | _created())
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    return await request.app.state.responses.create(body, request)


@router.post(
    "/v1/responses/input_tokens",
    response_model=InputTokensResponse,
    responses=openai_errors(400, 404, 500, 503),
)
async def count_input_tokens(body: InputTokensRequest, request: Request) -> Any:
    return await request.app.state.responses.input_tokens(body)


@router.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=_NOT_FOUND)
async def retrieve_response(response_id: str, request: Request) -> Any:
    return await request.app.state.responses.retrieve(response_id)


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse, responses=_NOT_FOUND)
async def delete_response(response_id: str, request: Request) -> Any:
    return await request.app.state.responses.delete(response_id)


@router.post(
    "/v1/responses/{response_id}/cancel",
    response_model=ResponseObject,
    responses=openai_errors(400, 404),
)
async def cancel_response(response_id: str, request: Request) -> Any:
    return await request.app.state.responses.cancel(response_id)


@router.get(
    "/v1/responses/{response_id}/input_items",
    response_model=InputItemList,
    responses=openai_errors(400, 404),
)
async def list_input_items(
    response_id: str,
    request: Request,
    order: Literal["asc", "desc"] = Query("desc", description="asc: oldest first"),
    limit: int = Query(20, ge=1, le=100, description="items per page"),
    after: str | None = Query(None, description="list the items after this item id"),
) -> Any:
    return await request.app.state.responses.input_items(
        response_id, order=order, limit=limit, after=after
    )
