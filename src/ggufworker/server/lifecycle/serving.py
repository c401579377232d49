"""Serving logic of the lifecycle API: model status rows, load and unload, status events,
``/props`` and ``/slots``. Everything here reads or drives the one model manager."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from ggufworker import __version__
from ggufworker import chat_formats as cf
from ggufworker.engine.types import SamplingParams
from ggufworker.errors import GGUFWorkerError, ModelNotFoundError
from ggufworker.server.core.models import ModelManager, ServedModel
from ggufworker.server.lifecycle.protocol import (
    ActionResponse,
    GenerationSettings,
    LifecycleModel,
    LoadRequest,
    Modalities,
    ModelListResponse,
    ModelStatus,
    PropsResponse,
    SlotInfo,
    UnloadRequest,
)

logger = logging.getLogger(__name__)

#: seconds between two looks at the models while an event stream is open
POLL_S = 0.25
#: seconds between two keep-alive comments on an idle event stream
PING_S = 15.0


def _iso(t: float) -> str:
    when = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


def status_of(manager: ModelManager, model: ServedModel) -> ModelStatus:
    """``loaded``, ``loading``, ``downloading`` (a load whose file is not on disk yet: the
    registry is pulling it) or ``unloaded`` (with ``failed`` after a failed load)."""
    if model.state == "ready":
        return ModelStatus(value="loaded")
    if model.state == "loading":
        if model.path is None and manager.file_on_disk(model) is None:
            return ModelStatus(value="downloading")
        return ModelStatus(value="loading")
    if model.state == "failed":
        return ModelStatus(value="unloaded", failed=True, error=model.error)
    return ModelStatus(value="unloaded")


def model_row(manager: ModelManager, model: ServedModel) -> LifecycleModel:
    """The status row of a served model."""
    path = manager.file_on_disk(model)
    size = None
    if path is not None:
        try:
            size = path.stat().st_size
        except OSError:
            path = None
    engine = model.engine if model.state == "ready" else None
    expires = manager.expires_at(model) if engine is not None else None
    return LifecycleModel(
        id=model.spec.name,
        status=status_of(manager, model),
        served=True,
        kind="embedding" if model.spec.embedding else "generation",
        pinned=model.spec.pinned,
        path=str(path) if path is not None else None,
        size=size,
        memory=engine.info.size_bytes if engine is not None else 0,
        n_ctx=engine.info.n_ctx if engine is not None else None,
        active=model.active,
        expires_at=_iso(expires) if expires is not None else None,
    )


def _cached_rows(manager: ModelManager, served: set[str]) -> list[LifecycleModel]:
    """Registry models in the cache that are not served (yet)."""
    from ggufworker.registry.listing import list_models

    try:
        rows = list_models(home=manager.home)
    except GGUFWorkerError as exc:  # a broken models.yaml must not break the listing
        logger.warning("registry unavailable for /models: %s", exc)
        return []
    out = []
    for row in rows:
        if not row.cached or row.name in served or row.name.startswith("hf://"):
            continue
        out.append(
            LifecycleModel(
                id=row.name,
                status=ModelStatus(value="unloaded"),
                served=False,
                path=row.path,
                size=row.cached_size,
            )
        )
    return out


async def list_models(manager: ModelManager) -> ModelListResponse:
    """Every served model with its status, then the cached registry models not served."""
    rows = [model_row(manager, m) for m in manager.all_models()]
    served = {m.spec.name for m in manager.all_models()} | {
        m.spec.source for m in manager.all_models()
    }
    rows += await asyncio.to_thread(_cached_rows, manager, served)
    return ModelListResponse(data=rows)


def find(manager: ModelManager, name: str) -> ServedModel:
    """The served model ``name`` means: a generation model, else an embedding one.

    Raises:
        ModelNotFoundError: neither serves that name.
    """
    try:
        return manager.lookup(name)
    except ModelNotFoundError:
        try:
            return manager.lookup(name, embedding=True)
        except ModelNotFoundError:
            pass
        raise


async def load(manager: ModelManager, body: LoadRequest) -> ActionResponse:
    """Load a model now (pulling a registry model first when it is not cached)."""
    model = await manager.load(body.model, keep_alive=body.keep_alive, pin=body.pin)
    return ActionResponse(model=model_row(manager, model))


async def unload(manager: ModelManager, body: UnloadRequest) -> ActionResponse:
    """Unload a model after its requests in flight have finished; its pin is released."""
    model = find(manager, body.model)
    await manager.stop(model)
    return ActionResponse(model=model_row(manager, model))


def _event(row: LifecycleModel) -> bytes:
    return b"data: " + row.model_dump_json().encode() + b"\n\n"


async def status_events(
    manager: ModelManager, *, follow: bool, poll_s: float = POLL_S, ping_s: float = PING_S
) -> AsyncIterator[bytes]:
    """Server-sent events: one per known model first, then one each time a served model's
    status or pin changes (``follow``; otherwise the stream ends after the first ones)."""
    listing = await list_models(manager)
    yield b"retry: 2000\n\n"
    for row in listing.data:
        yield _event(row)
    if not follow:
        return
    seen: dict[int, str] = {}
    for model in manager.all_models():
        seen[id(model)] = _fingerprint(manager, model)
    quiet_since = time.monotonic()
    while True:
        await asyncio.sleep(poll_s)
        for model in manager.all_models():
            mark = _fingerprint(manager, model)
            if seen.get(id(model)) != mark:
                seen[id(model)] = mark
                quiet_since = time.monotonic()
                yield _event(model_row(manager, model))
        if time.monotonic() - quiet_since >= ping_s:
            quiet_since = time.monotonic()
            yield b": ping\n\n"


def _fingerprint(manager: ModelManager, model: ServedModel) -> str:
    status = status_of(manager, model)
    return json.dumps([status.value, status.failed, model.spec.pinned])


# --- /props and /slots ------------------------------------------------------------------------


def build_info() -> str:
    try:
        llama = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        llama = "unknown"
    return f"ggufworker {__version__} (llama.cpp through llama-cpp-python {llama})"


def _default_params() -> dict[str, Any]:
    defaults = asdict(SamplingParams())
    keep = (
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
        "seed",
    )
    return {key: defaults[key] for key in keep}


async def props(manager: ModelManager, name: str | None) -> PropsResponse:
    """One model's defaults, context, template and capabilities (loaded first if needed,
    as a request to it would)."""
    embedding = False
    if name is not None:
        embedding = find(manager, name).spec.embedding
    lease = await manager.acquire(name, embedding=embedding)
    try:
        info = lease.engine.info
        template = info.chat_template
        caps = ["embedding"] if embedding else ["completion", *cf.capabilities(template)]
        return PropsResponse(
            default_generation_settings=GenerationSettings(
                n_ctx=info.n_ctx, params=_default_params()
            ),
            total_slots=info.n_parallel,
            model_path=info.path,
            chat_template=template,
            chat_template_caps={
                "supports_tools": "tools" in caps,
                "supports_reasoning": "reasoning" in caps,
                "supports_system_role": True,
            },
            modalities=Modalities(),
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            build_info=build_info(),
            model=lease.name,
            capabilities=caps,
            architecture=info.architecture,
            n_params=info.n_params,
            size=info.size_bytes,
            quantization=info.quantization,
            n_ctx_train=info.n_ctx_train,
        )
    finally:
        lease.release()


def _engines(engine: Any) -> list[Any]:
    """The engines behind a served model (several with ``--replicas``)."""
    replicas = getattr(engine, "replicas", None)
    return [r.engine for r in replicas] if replicas is not None else [engine]


def slots(manager: ModelManager, name: str | None) -> list[SlotInfo]:
    """The slots of a loaded model (none when it is not loaded; nothing is loaded here)."""
    model = find(manager, name) if name is not None else manager.lookup(None)
    engine = model.engine if model.state == "ready" else None
    if engine is None:
        return []
    out: list[SlotInfo] = []
    for replica, inner in enumerate(_engines(engine)):
        reader = getattr(inner, "slot_states", None)
        if reader is None:
            continue
        n_ctx = inner.info.n_ctx
        for slot in reader():
            busy = slot.request_id is not None
            out.append(
                SlotInfo(
                    id=len(out),
                    n_ctx=n_ctx,
                    is_processing=busy,
                    state="processing" if busy else "idle",
                    request_id=slot.request_id,
                    n_cached=slot.n_cached,
                    model=model.spec.name,
                    replica=replica,
                )
            )
    return out
