"""Serving logic of the OpenAI endpoints around generation: models, embeddings, tokenize."""

from __future__ import annotations

import base64
import struct
from dataclasses import asdict
from typing import Any

from fastapi.responses import JSONResponse

from ggufworker.chat_formats import capabilities as chat_capabilities
from ggufworker.server.core import embeddings as core_embeddings
from ggufworker.server.core.models import ModelManager
from ggufworker.server.core.replicas import replica_stats
from ggufworker.server.openai.protocol import (
    DetokenizeRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
)


def list_models(manager: ModelManager) -> ModelList:
    """Every served model, loaded or not; one card per name (a name may serve both chat and
    embeddings, from two loaded engines)."""
    cards: dict[str, ModelCard] = {}
    for model in manager.all_models():
        card = cards.setdefault(model.spec.name, ModelCard(id=model.spec.name))
        if not model.spec.embedding:
            card.capabilities.append("completion")
        elif model.state == "ready" and model.engine is not None:
            card.capabilities.extend(core_embeddings.capabilities(model.engine))
        else:  # not loaded: what it pools by is not known yet
            card.capabilities.append("embedding")
        card.pinned = card.pinned or model.spec.pinned
        if model.state == "ready" and model.engine is not None:
            card.loaded = True
            info = model.engine.info
            if not model.spec.embedding:
                card.capabilities.extend(
                    c for c in chat_capabilities(info.chat_template) if c not in card.capabilities
                )
            card.meta = card.meta or {
                "architecture": info.architecture,
                "n_ctx": info.n_ctx,
                "n_ctx_train": info.n_ctx_train,
                "n_params": info.n_params,
                "size": info.size_bytes,
                "quantization": info.quantization,
                "backend": info.backend,
                "memory": info.memory,
                # per-slot: greedy output independent of other traffic (engine/kv_layout.py)
                "kv_layout": getattr(model.engine, "kv_layout", "unified"),
                # the KV cache's element types, K/V (--cache-type-k/-v)
                "kv_cache_type": getattr(model.engine, "kv_cache_type", "f16/f16"),
                # where sampled requests are drawn: backend (llama.cpp's graph) or host (numpy)
                "sampling": getattr(model.engine, "sampling", "host"),
            }
            if not model.spec.embedding:  # per-replica (per-GPU) slots, see server/replicas.py
                card.meta["replicas"] = [asdict(r) for r in replica_stats(model.engine)]
            if hasattr(model.engine, "rpc_workers"):  # split over llama.cpp RPC workers
                card.meta["rpc_workers"] = model.engine.rpc_workers()
                card.meta["rpc_state"] = model.engine.state
    # LoRA adapters: a card each, its parent the base (vLLM's shape), id BASE:NAME
    for base, spec in manager.loras.items():
        parent = cards.get(base)
        if parent is not None:
            lora_id = f"{base}:{spec.name}"
            cards[lora_id] = ModelCard(
                id=lora_id, root=str(spec.path), parent=base, loaded=parent.loaded,
                capabilities=list(parent.capabilities), pinned=parent.pinned,
                meta={"lora_scale": spec.scale},
            )  # fmt: skip
    return ModelList(data=list(cards.values()))


async def embeddings(manager: ModelManager, body: EmbeddingRequest) -> JSONResponse:
    """OpenAI embeddings from a model served for embeddings (batched in its engine)."""
    inputs = body.inputs()
    lease = await manager.acquire(body.model, embedding=True)
    try:
        result = await core_embeddings.embed(
            lease.engine, inputs, truncate=body.truncate, dimensions=body.dimensions
        )
    finally:
        lease.release()
    data = []
    for i, vector in enumerate(result.vectors):
        value: Any = vector
        if body.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = result.prompt_tokens
    # a JSONResponse as is: FastAPI's encoder walks every float of a dict it is handed
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": lease.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def tokenize(manager: ModelManager, body: TokenizeRequest) -> dict[str, Any]:
    lease = await manager.acquire(body.model)
    try:
        engine = lease.engine
        ids = engine.tokenize(
            body.content, add_special=body.add_special, parse_special=body.parse_special
        )
        if not body.with_pieces:
            return {"tokens": ids}
        return {"tokens": [{"id": i, "piece": engine.detokenize([i])} for i in ids]}
    finally:
        lease.release()


async def detokenize(manager: ModelManager, body: DetokenizeRequest) -> dict[str, Any]:
    lease = await manager.acquire(body.model)
    try:
        return {"content": lease.engine.detokenize(body.tokens)}
    finally:
        lease.release()
