"""Adapter routes: vLLM's ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` and
llama-server's ``GET/POST /lora-adapters``, thin over :mod:`ggufworker.server.lora.serving`.
Errors come in OpenAI's envelope (404: no such adapter or model; 400: an adapter made for
another base, with the engine's one-line reason)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from prometheus_client.core import GaugeMetricFamily, Metric

from ggufworker.server.core.metrics import PREFIX
from ggufworker.server.core.models import ModelManager
from ggufworker.server.core.openapi import openai_errors, text_ok
from ggufworker.server.lora import serving
from ggufworker.server.lora.protocol import (
    LoadLoraAdapterRequest,
    LoraAdapterItem,
    LoraScaleItem,
    UnloadLoraAdapterRequest,
)

router = APIRouter(tags=["lora"])

_MODEL_QUERY = Query(default=None, description="base model (default: the first one)")


@router.post(
    "/v1/load_lora_adapter",
    responses=openai_errors(400, 404, 500) | text_ok(description="Success: ..."),
    summary="load a LoRA adapter GGUF onto a base; it is served as model id BASE:NAME",
)
async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> PlainTextResponse:
    return PlainTextResponse(await serving.load_adapter(request.app.state.manager, body))


@router.post(
    "/v1/unload_lora_adapter",
    responses=openai_errors(400, 404, 500) | text_ok(description="Success: ..."),
    summary="unload a LoRA adapter; requests running under it end with an error",
)
async def unload_lora_adapter(
    body: UnloadLoraAdapterRequest, request: Request
) -> PlainTextResponse:
    return PlainTextResponse(await serving.unload_adapter(request.app.state.manager, body))


@router.get(
    "/lora-adapters",
    response_model=list[LoraAdapterItem],
    responses=openai_errors(404, 500),
    summary="the base's adapters: id, path and global scale (llama-server's shape)",
)
async def list_lora_adapters(
    request: Request, model: str | None = _MODEL_QUERY
) -> list[LoraAdapterItem]:
    return await serving.list_adapters(request.app.state.manager, model)


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
    return await serving.set_scales(request.app.state.manager, model, body)


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
