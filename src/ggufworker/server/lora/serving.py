"""Serving logic of the adapter routes (:mod:`ggufworker.server.lora.router`): loading and
unloading adapters on a base through the model manager, and llama-server's global scales."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ggufworker.errors import ModelNotFoundError
from ggufworker.server.core.models import ModelManager
from ggufworker.server.lora.protocol import (
    LoadLoraAdapterRequest,
    LoraAdapterItem,
    LoraScaleItem,
    UnloadLoraAdapterRequest,
)
from ggufworker.server.lora.table import AdapterSpec, model_id


async def load_adapter(manager: ModelManager, body: LoadLoraAdapterRequest) -> str:
    """Load an adapter onto its base (checked against it first); the success line.

    Raises:
        ModelNotFoundError: no such base.
        InvalidRequestError: the name is taken, or the adapter was made for another base.
    """
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
    return f"Success: LoRA adapter '{spec.name}' added successfully as {model_id(base, spec.name)}."


async def unload_adapter(manager: ModelManager, body: UnloadLoraAdapterRequest) -> str:
    """Unload an adapter by name; the success line.

    Raises:
        ModelNotFoundError: no adapter of that name is loaded.
    """
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
    return f"Success: LoRA adapter '{spec.name}' removed successfully."


async def list_adapters(manager: ModelManager, model: str | None) -> list[LoraAdapterItem]:
    """A base's adapters with their ids, paths and global scales."""
    lease = await manager.acquire(model)
    try:
        return _items(lease.name, lease.engine.loras())
    finally:
        lease.release()


async def set_scales(
    manager: ModelManager, model: str | None, body: list[LoraScaleItem]
) -> list[LoraAdapterItem]:
    """Set a base's global adapter scales (requests without a lora list run under them)."""
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
