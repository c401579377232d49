"""Types of the lifecycle API (llama-server's router endpoints, ``/props`` and ``/slots``).

Field names follow llama-server where it has them (``status.value``, ``total_slots``,
``default_generation_settings``, ``is_processing``); ours are in marked blocks.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from ggufworker.server.core.protocol import LenientModel

StatusValue = Literal["unloaded", "loading", "loaded", "downloading"]


class ModelStatus(BaseModel):
    """Where a model is in its lifecycle."""

    value: StatusValue = Field(
        description="unloaded, downloading (being pulled), loading, or loaded"
    )
    failed: bool = Field(default=False, description="the last load failed (see error)")
    error: str | None = Field(default=None, description="why the last load failed")


class LifecycleModel(BaseModel):
    """One known model: served (by ``--model``, a load or a pull) or in the cache."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "ggufworker"
    status: ModelStatus
    # --- extensions ---
    served: bool = Field(
        description="served now; false: a cached registry model that POST /models/load serves"
    )
    kind: Literal["generation", "embedding"] = "generation"
    pinned: bool = Field(default=False, description="never unloaded for idleness or evicted")
    path: str | None = Field(default=None, description="the GGUF file, when on disk")
    size: int | None = Field(default=None, description="bytes of the GGUF file")
    memory: int = Field(default=0, description="bytes of weights held in memory (0: unloaded)")
    n_ctx: int | None = Field(default=None, description="context per slot, once loaded")
    active: int = Field(default=0, description="requests running on it now")
    expires_at: str | None = Field(
        default=None,
        description="when it unloads if it stays idle (RFC 3339, UTC); null: loaded for good "
        "or not loaded",
    )


class ModelListResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[LifecycleModel]


class LoadRequest(LenientModel):
    """``POST /models/load``: load a model now (and serve a registry model not served yet)."""

    model: str = Field(min_length=1, description="served name, alias or registry name")
    # --- extensions ---
    keep_alive: float | None = Field(
        default=None,
        description="seconds it may stay loaded while idle; negative: forever (pins it)",
    )
    pin: bool | None = Field(
        default=None,
        description="true: never unloaded for idleness nor evicted by --max-loaded-models; "
        "false: release the pin",
    )


class UnloadRequest(LenientModel):
    """``POST /models/unload``: unload once the requests in flight have finished."""

    model: str = Field(min_length=1, description="served name or alias")


class ActionResponse(BaseModel):
    """The answer of a load or an unload: the model's row afterwards."""

    success: bool = True
    model: LifecycleModel


class Modalities(BaseModel):
    vision: bool = False
    audio: bool = False


class GenerationSettings(BaseModel):
    """What a request gets for the fields it leaves out."""

    n_ctx: int
    params: dict[str, Any]


class PropsResponse(BaseModel):
    """``GET /props``: one model's defaults, context, template and capabilities."""

    default_generation_settings: GenerationSettings
    total_slots: int
    model_path: str
    chat_template: str | None
    chat_template_caps: dict[str, bool]
    modalities: Modalities
    bos_token: str | None
    eos_token: str | None
    build_info: str
    is_sleeping: bool = False
    # --- extensions ---
    model: str
    capabilities: list[str]
    architecture: str
    n_params: int
    size: int
    quantization: str
    n_ctx_train: int


class SlotInfo(BaseModel):
    """``GET /slots``: one sequence slot of a loaded model."""

    id: int
    n_ctx: int
    is_processing: bool
    # --- extensions ---
    state: Literal["idle", "processing"]
    request_id: str | None = Field(description="the request running in the slot (null: idle)")
    n_cached: int = Field(description="tokens the slot's memory holds (its reusable prefix)")
    model: str
    replica: int = Field(default=0, description="the engine of a --replicas set")
