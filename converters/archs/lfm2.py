"""Lfm2ForCausalLM (LiquidAI LFM2): gated short-convolution blocks between attention blocks.

``layer_types`` says which blocks are ``conv`` and which attention; llama.cpp reads that as a
per-layer KV head count (0 for a convolution block). The depthwise conv weight loses its
singleton channel axis. The feed-forward width is the one the checkpoint holds (transformers
shrinks ``intermediate_size`` to 2/3 and rounds it; the tensor shape is the result). RoPE is
NEOX-style in llama.cpp, as in transformers, so q/k map 1:1.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf

from converters.archs.base import ArchConverter, TensorPlan
from converters.archs.mamba import reshaped
from converters.checkpoint import TensorRef
from ggufworker.errors import ConversionError


class Lfm2Converter(ArchConverter):
    hf_architectures = ("Lfm2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.LFM2

    def layer_kv_heads(self) -> list[int]:
        layer_types = self.cfg.get("layer_types")
        if not layer_types:
            attn = set(self.cfg.get("full_attn_idxs") or range(self.n_layers))
            layer_types = ["full_attention" if i in attn else "conv" for i in range(self.n_layers)]
        if len(layer_types) != self.n_layers:
            raise ConversionError("layer_types must list every layer")
        return [0 if t == "conv" else self.n_head_kv for t in layer_types]

    def ffn_length(self) -> int:
        for name, ref in self.ckpt.tensors.items():
            if name.endswith("feed_forward.w1.weight"):
                return int(ref.shape[0])
        raise ConversionError("checkpoint has no feed_forward.w1 weight")

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        if cfg.get("conv_bias"):
            raise ConversionError("LFM2 short-convolution biases are not supported by llama.cpp")
        w.add_block_count(self.n_layers)
        if cfg.get("max_position_embeddings"):
            w.add_context_length(int(cfg["max_position_embeddings"]))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.ffn_length())
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.layer_kv_heads())
        w.add_layer_norm_rms_eps(float(cfg.get("norm_eps") or 1e-5))
        w.add_rope_dimension_count(self.rope_dims())
        w.add_vocab_size(int(self.require("vocab_size")))
        w.add_shortconv_l_cache(int(self.require("conv_L_cache")))
        self.add_rope_metadata(w, self.rope)

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if hf_name.endswith("conv.conv.weight"):
            name = self.gguf_name(hf_name)
            yield reshaped(name, ref, (ref.shape[0], ref.shape[-1]), keep_f32=True)
        else:
            yield self.passthrough(hf_name, ref)
