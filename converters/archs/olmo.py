"""OLMo (``OlmoForCausalLM`` -> ``olmo``) and OLMo 2/3 (``Olmo2ForCausalLM``/``Olmo3ForCausalLM``
-> ``olmo2``).

OLMo uses non-parametric LayerNorm (no norm tensors, eps fixed at 1e-5 in Hugging Face's code) and
the halves RoPE, so q/k rows are permuted like Llama's. OLMo 2 runs NEOX RoPE in llama.cpp (no
permute), normalizes q and k over all heads, and puts its norms after attention and MLP; llama.cpp
needs its output tensor even when the checkpoint ties it. OLMo 3 adds sliding-window layers.
"""

from __future__ import annotations

import gguf

from converters.archs.base import ArchConverter
from converters.archs.llama import LlamaConverter

#: transformers' OlmoLayerNorm hard-codes this epsilon (no config key holds it).
OLMO_LAYER_NORM_EPS = 1e-5


class OlmoConverter(LlamaConverter):
    hf_architectures = ("OlmoForCausalLM", "OLMoForCausalLM")
    gguf_arch = gguf.MODEL_ARCH.OLMO

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        w.add_layer_norm_eps(OLMO_LAYER_NORM_EPS)
        if self.cfg.get("clip_qkv") is not None:
            w.add_clamp_kqv(float(self.cfg["clip_qkv"]))


class Olmo2Converter(ArchConverter):
    hf_architectures = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")
    gguf_arch = gguf.MODEL_ARCH.OLMO2
    output_required = True

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        window = self.cfg.get("sliding_window")
        layer_types = self.cfg.get("layer_types")
        if window and layer_types and "sliding_attention" in layer_types:
            w.add_sliding_window(int(window))
            w.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
