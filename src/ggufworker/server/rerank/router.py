"""HTTP routes of the rerank API: ``/v1/rerank`` (Jina, Cohere v1), ``/v2/rerank`` (Cohere v2)
and llama-server's ``/rerank``, ``/reranking``, ``/v1/reranking``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ggufworker.server.core.openapi import openai_errors
from ggufworker.server.rerank import serving
from ggufworker.server.rerank.protocol import RerankRequest, RerankResponse

router = APIRouter()  # API keys are checked by APIKeyMiddleware

_PATHS = ("/v1/rerank", "/v2/rerank", "/rerank", "/reranking", "/v1/reranking")


async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
    """Documents ranked by relevance to the query, best first."""
    return await serving.rerank(request.app.state.manager, body)


for _path in _PATHS:
    router.add_api_route(
        _path,
        rerank,
        methods=["POST"],
        response_model=RerankResponse,
        response_model_exclude_none=True,
        responses=openai_errors(400, 404, 500, 503),
        summary="rerank documents against a query",
        include_in_schema=_path in ("/v1/rerank", "/v2/rerank"),
    )
