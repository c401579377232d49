"""How the KV cache is laid out: one pool shared by all slots, or one stream per slot.

Measured (SmolLM2 Q4_1, CPU, 8 chat prompts; docs/ENGINE.md "Determinism"): in llama.cpp's
unified cache a sequence's attention runs over cells wherever the shared buffer placed them, so
the same prompt gives other greedy tokens depending on what else is cached and running — 1 of 8
outputs equal to the prompt alone when slots held other prompts sharing a system prompt, even
with prefills one at a time. With one stream per slot (``kv_unified = false``) all 8 were equal
in every case, prefix reuse included.

So the engine gives each slot its own stream of the full context (a slot can still use the whole
``n_ctx``) when that memory is affordable, and falls back to the shared pool otherwise:

- ``per-slot``: ``n_parallel`` streams of ``n_ctx`` cells: output independent of other traffic;
  KV memory grows with the slot count.
- ``unified``: one pool of ``n_ctx`` cells shared by all slots (the most context per byte).
- ``auto`` (default): ``per-slot`` when its KV fits in a quarter of the memory free on the device
  that holds the cache, else ``unified``. Recurrent and hybrid models keep per-sequence states
  either way and stay ``unified``.
"""

from __future__ import annotations

import logging
from typing import Literal

from ggufworker.engine._native import llama_cpp

logger = logging.getLogger(__name__)

KvLayout = Literal["auto", "unified", "per-slot"]
KV_LAYOUTS: tuple[str, ...] = ("auto", "unified", "per-slot")
#: share of the free device memory ``auto`` lets per-slot streams take
AUTO_BUDGET = 0.25
#: bytes of one K or V element (llama.cpp's default cache type is f16)
_ELEMENT = 2


def kv_bytes_per_token(model: object) -> int:
    """KV cache bytes one token takes in every layer (f16 K and V)."""
    ptr = model.ptr  # type: ignore[attr-defined]
    meta: dict[str, str] = getattr(model, "metadata", {}) or {}
    arch = getattr(model, "architecture", "")
    n_layer = int(llama_cpp.llama_model_n_layer(ptr))
    n_head = max(1, int(llama_cpp.llama_model_n_head(ptr)))
    n_head_kv = int(llama_cpp.llama_model_n_head_kv(ptr))
    n_embd = int(llama_cpp.llama_model_n_embd(ptr))
    k = int(meta.get(f"{arch}.attention.key_length") or n_embd // n_head)
    v = int(meta.get(f"{arch}.attention.value_length") or k)
    return n_layer * n_head_kv * (k + v) * _ELEMENT


def _free_memory(backend: str) -> int | None:
    from ggufworker.engine.devices import list_devices

    try:
        devices = list_devices()
    except (OSError, AttributeError):
        return None
    kinds = ("gpu", "igpu") if backend == "gpu" else ("cpu",)
    free = [d.memory_free for d in devices if d.kind in kinds and d.memory_free > 0]
    return min(free) if free else None


def resolve(layout: KvLayout, model: object, *, n_ctx: int, n_seq: int) -> bool:
    """Whether the context is unified (True) or one stream per sequence (False).

    Raises:
        ValueError: an unknown layout name.
    """
    if layout not in KV_LAYOUTS:
        raise ValueError(f"kv layout must be one of {', '.join(KV_LAYOUTS)}, not {layout!r}")
    if getattr(model, "memory", "kv") != "kv" or n_seq <= 1:
        return True
    if layout != "auto":
        return layout == "unified"
    need = kv_bytes_per_token(model) * n_ctx * n_seq
    free = _free_memory(getattr(model, "backend", "cpu"))
    if free is not None and need <= AUTO_BUDGET * free:
        logger.info(
            "KV cache: %d per-slot streams of %d tokens (%.0f MiB)", n_seq, n_ctx, need / 2**20
        )
        return False
    logger.info(
        "KV cache: one pool of %d tokens shared by %d slots (per-slot streams would take "
        "%.0f MiB of %s MiB free); greedy output can depend on other traffic",
        n_ctx, n_seq, need / 2**20, "?" if free is None else f"{free / 2**20:.0f}",
    )  # fmt: skip
    return True
