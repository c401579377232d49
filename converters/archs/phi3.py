"""Phi3ForCausalLM: fused qkv_proj and gate_up_proj are kept fused, as llama.cpp expects.

Long-context (``longrope``) checkpoints also get their short/long RoPE factor tensors and
the attention factor llama.cpp needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import gguf

from converters.archs.base import ArchConverter, TensorPlan, f32_plan
from ggufworker.errors import ConversionError


class Phi3Converter(ArchConverter):
    hf_architectures = ("Phi3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.PHI3

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        key = "original_max_position_embeddings"
        orig = self.rope.get(key) or self.cfg.get(key)
        if orig:
            w.add_rope_scaling_orig_ctx_len(int(orig))
        # llama.cpp reads 0 as "no sliding window" (and tells Phi-4 apart by it)
        w.add_sliding_window(int(self.cfg.get("sliding_window") or 0))
        if self.rope.get("long_factor"):
            w.add_rope_scaling_attn_factors(self._long_attn_factor(self.rope, orig))

    def _long_attn_factor(self, rope: dict, orig: int | None) -> float:
        if not orig:
            raise ConversionError("longrope needs original_max_position_embeddings")
        scale = float(self.require("max_position_embeddings")) / float(orig)
        if scale <= 1.0:
            return 1.0
        kind = str(rope.get("rope_type", "")).lower()
        if kind in ("su", "longrope"):
            return math.sqrt(1 + math.log(scale) / math.log(orig))
        if kind == "yarn":
            return 0.1 * math.log(scale) + 1.0
        raise ConversionError(f"Phi-3 RoPE scaling type {kind!r} is not supported")

    def extra_tensors(self) -> Iterable[TensorPlan]:
        long_f, short_f = self.rope.get("long_factor"), self.rope.get("short_factor")
        if not long_f:
            return
        if not short_f or len(long_f) != len(short_f) or len(long_f) * 2 != self.rope_dims():
            raise ConversionError(
                "Phi-3 long/short RoPE factors must both have rope_dims/2 entries"
            )
        names = gguf.TENSOR_NAMES
        yield f32_plan(names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", long_f)
        yield f32_plan(names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", short_f)
