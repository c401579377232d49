"""Granite (``GraniteForCausalLM`` -> ``granite``): Llama with four µP multipliers.

Hugging Face multiplies the embeddings by ``embedding_multiplier``, each residual branch by
``residual_multiplier``, uses ``attention_multiplier`` as the attention scale (instead of
1/sqrt(head_dim)) and divides the logits by ``logits_scaling``. llama.cpp reads the same four
numbers as ``granite.{embedding_scale, residual_scale, attention.scale, logit_scale}``; all four
are written, with transformers' defaults where the config omits them (llama.cpp requires
``logit_scale``).
"""

from __future__ import annotations

from typing import ClassVar

import gguf

from converters.archs.llama import LlamaConverter

#: config key -> its default in transformers' GraniteConfig
MUP_DEFAULTS = {
    "embedding_multiplier": 1.0,
    "residual_multiplier": 1.0,
    "attention_multiplier": 1.0,
    "logits_scaling": 1.0,
}


class GraniteConverter(LlamaConverter):
    hf_architectures: ClassVar[tuple[str, ...]] = ("GraniteForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GRANITE

    def mup(self, key: str) -> float:
        value = self.cfg.get(key)
        return float(MUP_DEFAULTS[key] if value is None else value)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        w.add_embedding_scale(self.mup("embedding_multiplier"))
        w.add_residual_scale(self.mup("residual_multiplier"))
        w.add_attention_scale(self.mup("attention_multiplier"))
        w.add_logit_scale(self.mup("logits_scaling"))
