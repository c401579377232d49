"""The one embedding and rerank path every surface translates onto (OpenAI /v1/embeddings,
Ollama /api/embed and /api/embeddings, /v1/rerank): inputs to a leased embedding engine, batched
there with concurrent requests, and the shaping all of them share (Matryoshka ``dimensions``,
scores sorted for ``top_n``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ggufworker.errors import InvalidRequestError


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class Ranked:
    index: int
    score: float


@dataclass
class Ranking:
    results: list[Ranked]  # best first
    prompt_tokens: int


def _pooling(engine: Any) -> Any:
    pooling = getattr(engine, "pooling", None)
    if pooling is None:
        raise InvalidRequestError("this model is not loaded for embeddings", param="model")
    return pooling


async def embed(
    engine: Any,
    inputs: Sequence[str | Sequence[int]],
    *,
    truncate: bool = False,
    dimensions: int | None = None,
) -> Embeddings:
    """Embeddings of ``inputs`` (texts or token ids) from an embedding engine.

    Args:
        truncate: cut over-long inputs instead of refusing them.
        dimensions: keep the first ``dimensions`` values (Matryoshka-trained models), then
            normalise again when the model's vectors are normalised.

    Raises:
        InvalidRequestError: the model is a reranker, an input is empty or bad, or
            ``dimensions`` exceeds the model's.
        ContextLengthExceededError: an input is too long and ``truncate`` is off.
    """
    from ggufworker.engine.embedding import l2_normalized

    if not inputs:
        raise InvalidRequestError("input must not be empty", param="input")
    pooling = _pooling(engine)
    if pooling.kind == "rank":
        raise InvalidRequestError(
            f"model {engine.info.name!r} is a reranker: use /v1/rerank", param="model"
        )
    if dimensions is not None and dimensions > pooling.n_out:
        raise InvalidRequestError(
            f"dimensions must be at most {pooling.n_out} for this model", param="dimensions"
        )
    # awaited, not run in a worker thread: concurrent requests must all be queued in the
    # engine at once to share its decodes (the default thread pool holds only a few)
    result = await asyncio.wrap_future(engine.submit_embeddings(list(inputs), truncate=truncate))
    vectors = result.vectors
    if dimensions is not None and dimensions < pooling.n_out:
        vectors = [v[:dimensions] for v in vectors]
        if pooling.normalize:
            vectors = l2_normalized(vectors)
    return Embeddings(vectors, result.prompt_tokens)


async def rerank(
    engine: Any,
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None = None,
    truncate: bool = False,
) -> Ranking:
    """Documents scored against ``query`` by a reranker, best first, ``top_n`` of them.

    Raises:
        InvalidRequestError: the model is not a reranker, or there are no documents.
        ContextLengthExceededError: a pair is too long and ``truncate`` is off.
    """
    if not documents:
        raise InvalidRequestError("documents must not be empty", param="documents")
    _pooling(engine)
    result = await asyncio.wrap_future(
        engine.submit_rerank(query, list(documents), truncate=truncate)
    )
    ranked = [Ranked(i, float(v[0])) for i, v in enumerate(result.vectors)]
    ranked.sort(key=lambda r: r.score, reverse=True)
    if top_n is not None:
        ranked = ranked[:top_n]
    return Ranking(ranked, result.prompt_tokens)


def capabilities(engine: Any) -> list[str]:
    """What a loaded embedding engine serves: ``embedding`` or ``rerank``."""
    pooling = getattr(engine, "pooling", None)
    return ["rerank"] if pooling is not None and pooling.kind == "rank" else ["embedding"]
