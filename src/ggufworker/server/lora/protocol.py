"""Bodies of the adapter routes: vLLM's load/unload, llama-server's /lora-adapters."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ggufworker.server.core.protocol import LenientModel


class LoadLoraAdapterRequest(LenientModel):
    """vLLM's ``POST /v1/load_lora_adapter`` body (``model`` and ``scale`` are ours)."""

    lora_name: str = Field(..., min_length=1, description="the adapter's name (model id BASE:NAME)")
    lora_path: str = Field(..., min_length=1, description="its GGUF file on the server")
    model: str | None = Field(default=None, description="base model (default: the first one)")
    scale: float = Field(default=1.0, ge=-100.0, le=100.0, description="scale of BASE:NAME")


class UnloadLoraAdapterRequest(LenientModel):
    """vLLM's ``POST /v1/unload_lora_adapter`` body."""

    lora_name: str = Field(..., min_length=1, description="NAME or BASE:NAME")
    lora_int_id: int | None = Field(default=None, description="accepted, not needed")


class LoraAdapterItem(BaseModel):
    """One adapter as llama-server's ``GET /lora-adapters`` lists it (plus name and model)."""

    id: int
    path: str
    scale: float = Field(description="global scale: applied to requests without a lora list")
    name: str
    model: str = Field(description="the base it applies to; its model id is MODEL:NAME")
    model_scale: float = Field(description="the scale requests to MODEL:NAME run at")
    size_bytes: int


class LoraScaleItem(LenientModel):
    """One entry of llama-server's ``POST /lora-adapters`` body."""

    id: int = Field(..., ge=0)
    scale: float = Field(..., ge=-100.0, le=100.0)
