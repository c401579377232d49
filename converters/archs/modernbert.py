"""ModernBERT encoders (ModernBertModel, ModernBertForMaskedLM) -> llama.cpp ``modern-bert``.

Pre-norm blocks with bias-free LayerNorms, fused ``Wqkv``, a GLU feed-forward whose ``Wi``
holds the activated half first, NEOX RoPE with one base for global and one for local layers, and
local layers attending to a symmetric window of ``local_attention // 2`` tokens on each side
(llama.cpp's symmetric sliding window of ``n_swa`` computes the same band). Layer 0 has no
attention norm (an identity in transformers, an absent tensor in llama.cpp).

llama.cpp reads the LayerNorm epsilon from ``modern-bert.attention.layer_norm_epsilon``;
ModernBERT configs call it ``norm_eps``, and it is written under that key (llama.cpp's own
converter treats ``norm_eps`` as an RMS epsilon and writes no LayerNorm one, so its files do not
load).
"""

from __future__ import annotations

import gguf

from converters.archs.base import rope_parameters
from converters.archs.encoder import EncoderConverter
from converters.checkpoint import Checkpoint
from ggufworker.errors import ConversionError

#: transformers activation names -> the name llama.cpp's modern-bert graph reads (a GLU kind)
_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu", "silu": "silu", "relu": "relu"}


class ModernBertConverter(EncoderConverter):
    hf_architectures = ("ModernBertModel", "ModernBertForMaskedLM")
    gguf_arch = gguf.MODEL_ARCH.MODERN_BERT
    default_pooling = gguf.PoolingType.MEAN
    unused: tuple[str, ...] = ("head.", "decoder.")

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        for key in ("norm_bias", "attention_bias", "mlp_bias"):
            if self.cfg.get(key):
                raise ConversionError(f"ModernBERT with {key}=true is not supported by llama.cpp")
        act = str(self.cfg.get("hidden_activation") or "gelu")
        if act not in _ACTIVATIONS:
            raise ConversionError(f"hidden_activation={act!r} is not supported for modern-bert")
        self.activation = _ACTIVATIONS[act]

    @staticmethod
    def _strip(hf_name: str) -> str:
        return hf_name[len("model.") :] if hf_name.startswith("model.") else hf_name

    def skip(self, hf_name: str) -> bool:
        return self._strip(hf_name).startswith(self.unused) or super().skip(hf_name)

    def gguf_name(self, hf_name: str) -> str:
        return super().gguf_name(self._strip(hf_name))

    def _is_local(self) -> list[bool]:
        types = self.cfg.get("layer_types")
        if types and len(types) == self.n_layers:
            return [t == "sliding_attention" for t in types]
        every = int(self.cfg.get("global_attn_every_n_layers") or 1)
        return [i % every != 0 for i in range(self.n_layers)]

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        w.add_block_count(self.n_layers)
        w.add_context_length(int(self.require("max_position_embeddings")))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(int(self.require("intermediate_size")))
        w.add_head_count(self.n_head)
        w.add_layer_norm_eps(float(cfg.get("norm_eps", 1e-5)))
        w.add_rope_dimension_count(self.head_dim)
        w.add_rope_scaling_type(gguf.RopeScalingType.NONE)
        full = rope_parameters(cfg, "full_attention")
        local = rope_parameters(cfg, "sliding_attention")
        w.add_rope_freq_base(float(cfg.get("global_rope_theta") or full.get("rope_theta", 1e4)))
        local_theta = cfg.get("local_rope_theta") or local.get("rope_theta")
        is_local = self._is_local()
        if any(is_local):
            w.add_sliding_window(int(self.require("local_attention")))
            w.add_sliding_window_pattern(is_local)
            if local_theta is not None:
                w.add_rope_freq_base_swa(float(local_theta))
        # gguf 0.19's writer has no helper for this llama.cpp key
        w.add_string(f"{self.arch_name}.hidden_activation", self.activation)
        w.add_vocab_size(int(self.require("vocab_size")))
        self.add_pooling_metadata(w)
