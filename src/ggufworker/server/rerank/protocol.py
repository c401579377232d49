"""Request and response types of the rerank API: Jina's ``/v1/rerank`` shape, which Cohere's
``/v1/rerank`` and ``/v2/rerank`` share (``query``, ``documents``, ``top_n``,
``return_documents``; ``results[{index, relevance_score, document?}]``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ggufworker.server.core.protocol import LenientModel


class RerankDocument(LenientModel):
    text: str


class RerankRequest(LenientModel):
    model: str | None = None
    query: str = Field(..., description="what the documents are ranked against")
    documents: list[str | RerankDocument] = Field(
        ..., min_length=1, description="texts, or objects with a `text` field"
    )
    top_n: int | None = Field(default=None, ge=1, description="return the best N (default all)")
    return_documents: bool = Field(default=True, description="echo each document's text")
    # --- ggufworker extensions ---
    truncate: bool = Field(
        default=False,
        description="cut (query, document) pairs longer than the model takes instead of "
        "answering 400",
    )

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    object: str = "list"
    model: str
    results: list[RerankResult]
    usage: RerankUsage
