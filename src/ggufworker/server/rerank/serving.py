"""Serving logic of the rerank API: the request onto the one rerank path
(:func:`ggufworker.server.core.embeddings.rerank`), its result back in Jina/Cohere's shape."""

from __future__ import annotations

from ggufworker.server.core import embeddings as core_embeddings
from ggufworker.server.core.models import ModelManager
from ggufworker.server.core.protocol import new_id
from ggufworker.server.rerank.protocol import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
)


async def rerank(manager: ModelManager, body: RerankRequest) -> RerankResponse:
    """Score ``body.documents`` against ``body.query`` with a reranker model.

    Raises:
        ModelNotFoundError: no such embedding/rerank model is served.
        InvalidRequestError: the model is not a reranker.
        ContextLengthExceededError: a pair is too long and ``truncate`` is off.
    """
    texts = body.texts()
    lease = await manager.acquire(body.model, embedding=True)
    try:
        ranking = await core_embeddings.rerank(
            lease.engine, body.query, texts, top_n=body.top_n, truncate=body.truncate
        )
    finally:
        lease.release()
    results = [
        RerankResult(
            index=r.index,
            relevance_score=r.score,
            document=RerankDocument(text=texts[r.index]) if body.return_documents else None,
        )
        for r in ranking.results
    ]
    tokens = ranking.prompt_tokens
    return RerankResponse(
        id=new_id("rerank"),
        model=lease.name,
        results=results,
        usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
