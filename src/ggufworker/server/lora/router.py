"""Adapter routes: vLLM's ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` and
llama-server's ``GET/POST /lora-adapters``. Errors come in OpenAI's envelope (404: no such
adapter or model; 400: an adapter made for another base, with the engine's one-line reason)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from prometheus_client.core import GaugeMetricFamily, Metric

from ggufworker.errors import ModelNotFoundError
from ggufworker.server.core.metrics import PREFIX
from ggufworker.server.core.models import ModelManager
from ggufworker.server.core.openapi import openai_errors, text_ok
from ggufworker.server.lora.protocol import (
    LoadLoraAdapterRequest,
    LoraAdapterItem,
    LoraScaleItem,
    UnloadLoraAdapterRequest,
)
from ggufworker.server.lora.table import AdapterSpec, model_id

router = APIRouter(tags=["lora"])

_MODEL_QUERY = Query(default=None, description="base model (default: the first one)")


@router.post(
    "/v1/load_lora_adapter",
    responses=openai_errors(400, 404, 500) | text_ok(description="Success: ..."),
    summary="load a LoRA adapter GGUF onto a base; it is served as model id BASE:NAME",
)
async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> PlainTextResponse:
    manager: ModelManager = request.app.state.manager
    base = manager.lookup(body.model).spec.name
    spec = AdapterSpec(body.lora_name, Path(body.lora_path).expanduser(), body.scale)
    lease = await manager.acquire(base)
    try:
        if any(s.name == spec.name for s in manager.loras.adapters(base)):
            manager.loras.add(base, spec)  # raises: the name is taken
        await asyncio.to_thread(lease.engine.load_lora, spec.name, spec.path, scale=spec.scale)
        manager.loras.add(base, spec)
    finally:
        lease.release()
    return PlainTextResponse(
        f"Success: LoRA adapter '{spec.name}' added successfully as {model_id(base, spec.name)}."
    )


@router.post(
    "/v1/unload_lora_adapter",
    responses=openai_errors(400, 404, 500) | text_ok(description="Success: ..."),
    summary="unload a LoRA adapter; requests running under it end with an error",
)
async def unload_lora_adapter(
    body: UnloadLoraAdapterRequest, request: Request
) -> PlainTextResponse:
    manager: ModelManager = request.app.state.manager
    found = manager.loras.find(body.lora_name)
    if found is None:
        raise ModelNotFoundError(f"no LoRA adapter {body.lora_name!r} is loaded")
    base, spec = found
    manager.loras.remove(base, spec.name)
    model = manager.lookup(base)
    engine = model.engine
    if model.state == "ready" and engine is not None:
        try:
            await asyncio.to_thread(engine.unload_lora, spec.name)
        except ModelNotFoundError:
            pass  # the engine never had it (it failed to attach); the table no longer does
    return PlainTextResponse(f"Success: LoRA adapter '{spec.name}' removed successfully.")


@router.get(
    "/lora-adapters",
    response_model=list[LoraAdapterItem],
    responses=openai_errors(404, 500),
    summary="the base's adapters: id, path and global scale (llama-server's shape)",
)
async def list_lora_adapters(
    request: Request, model: str | None = _MODEL_QUERY
) -> list[LoraAdapterItem]:
    manager: ModelManager = request.app.state.manager
    lease = await manager.acquire(model)
    try:
        return _items(lease.name, lease.engine.loras())
    finally:
        lease.release()


@router.post(
    "/lora-adapters",
    response_model=list[LoraAdapterItem],
    responses=openai_errors(400, 404, 500),
    summary="set global adapter scales ([{id, scale}]): requests without a lora list run "
    "under them",
)
async def set_lora_adapters(
    body: list[LoraScaleItem], request: Request, model: str | None = _MODEL_QUERY
) -> list[LoraAdapterItem]:
    manager: ModelManager = request.app.state.manager
    lease = await manager.acquire(model)
    try:
        infos = lease.engine.set_lora_scales({item.id: item.scale for item in body})
        return _items(lease.name, infos)
    finally:
        lease.release()


def _items(base: str, infos: list[Any]) -> list[LoraAdapterItem]:
    return [
        LoraAdapterItem(
            id=i.id,
            path=i.path,
            scale=i.global_scale,
            name=i.name,
            model=base,
            model_scale=i.scale,
            size_bytes=i.size_bytes,
        )  # fmt: skip
        for i in infos
    ]


class LoraCollector:
    """``/metrics``: the adapters each loaded base holds (bytes and scales per adapter)."""

    def __init__(self, manager: Callable[[], ModelManager | None]) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            f"{PREFIX}_lora_adapter_info",
            "a loaded LoRA adapter (1), with its base, id and the scale of its model id",
            labels=["model", "adapter", "id", "scale", "global_scale"],
        )
        size = GaugeMetricFamily(
            f"{PREFIX}_lora_adapter_bytes",
            "memory of a loaded LoRA adapter's tensors",
            labels=["model", "adapter"],
        )
        manager = self._manager()
        for model in manager.all_models() if manager is not None else []:
            engine = model.engine
            if model.state != "ready" or engine is None or not hasattr(engine, "loras"):
                continue
            for a in engine.loras():
                labels = [model.spec.name, a.name, str(a.id), str(a.scale), str(a.global_scale)]
                info.add_metric(labels, 1)
                size.add_metric([model.spec.name, a.name], a.size_bytes)
        yield info
        yield size
