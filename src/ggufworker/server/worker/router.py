"""The worker API's route: ``POST /execute``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ggufworker.server.core.openapi import event_stream_ok, openai_errors
from ggufworker.server.core.sse import sse_response
from ggufworker.server.worker.protocol import ExecuteRequest
from ggufworker.server.worker.serving import execute_events

router = APIRouter()  # API keys are checked by APIKeyMiddleware


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
