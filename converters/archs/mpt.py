"""MptForCausalLM (transformers) and MPTForCausalLM (MosaicML remote code) -> llama.cpp ``mpt``.

No position embeddings: ALiBi biases the attention scores, ``clip_qkv`` clamps the fused QKV
activations, LayerNorms usually have no bias (``no_bias``). The two classes differ in one thing
that matters: transformers' MptForCausalLM always applies ALiBi with a maximum bias of 8,
whatever ``attn_config.alibi``/``alibi_bias_max`` say, while the remote code follows them (and
may use learned positions instead). The maximum bias is written accordingly. llama.cpp's own
converter registers only the remote-code name and follows ``attn_config`` for both.
"""

from __future__ import annotations

import logging
from typing import Any

import gguf

from converters.archs.base import ArchConverter
from converters.checkpoint import Checkpoint
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)

#: transformers' build_mpt_alibi_tensor is called without alibi_bias_max, so its default holds
HF_ALIBI_BIAS_MAX = 8.0


class MptConverter(ArchConverter):
    hf_architectures = ("MptForCausalLM", "MPTForCausalLM")
    gguf_arch = gguf.MODEL_ARCH.MPT
    layer_norm_eps_keys = ("layer_norm_epsilon",)
    config_aliases = {
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "hidden_size": "d_model",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        attn: dict[str, Any] = self.cfg.get("attn_config") or {}
        self.attn = attn
        self.n_head_kv = int(attn.get("kv_n_heads") or self.n_head)
        self.require("max_position_embeddings")
        scale = attn.get("softmax_scale")
        if scale is not None and abs(float(scale) - self.head_dim**-0.5) > 1e-6:
            raise ConversionError(
                f"attn_config.softmax_scale={scale} is not supported: llama.cpp's mpt graph "
                "scales by 1/sqrt(head_dim)"
            )
        if attn.get("prefix_lm"):
            raise ConversionError("attn_config.prefix_lm=true is not supported by llama.cpp")
        if self.cfg.get("logit_scale") not in (None, 1, 1.0):
            raise ConversionError(
                "config.json logit_scale is not supported by llama.cpp's mpt graph"
            )
        self.native = ckpt.architecture == "MptForCausalLM"
        if self.native and attn.get("qk_ln"):
            raise ConversionError("attn_config.qk_ln=true is not implemented by transformers' MPT")

    def max_alibi_bias(self) -> float:
        """The ALiBi maximum bias llama.cpp should apply (0: no ALiBi)."""
        attn = self.attn
        if self.native:
            wanted = attn.get("alibi_bias_max", HF_ALIBI_BIAS_MAX)
            if not attn.get("alibi", True) or float(wanted) != HF_ALIBI_BIAS_MAX:
                logger.warning(
                    "transformers' MptForCausalLM applies ALiBi with a maximum bias of %s "
                    "whatever attn_config says (alibi=%s, alibi_bias_max=%s); converted to match",
                    HF_ALIBI_BIAS_MAX, attn.get("alibi", True), wanted,
                )  # fmt: skip
            return HF_ALIBI_BIAS_MAX
        if not attn.get("alibi", False):
            return 0.0
        return float(attn.get("alibi_bias_max", HF_ALIBI_BIAS_MAX))

    def feed_forward_length(self) -> int:
        """The MLP width, from the first block's up projection.

        transformers' MptMLP is always ``4 * d_model`` wide, ignoring ``expansion_ratio``; the
        remote code honours it. The tensor says which one a checkpoint has.
        """
        up = self.ckpt.tensors.get("transformer.blocks.0.ffn.up_proj.weight")
        if up is not None:
            return int(up.shape[0])
        return int(self.cfg.get("expansion_ratio") or 4) * self.n_embd

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        w.add_block_count(self.n_layers)
        w.add_context_length(int(cfg["max_position_embeddings"]))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.feed_forward_length())
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_eps(float(cfg.get("layer_norm_epsilon") or 1e-5))
        if self.attn.get("clip_qkv"):
            w.add_clamp_kqv(float(self.attn["clip_qkv"]))
        w.add_max_alibi_bias(self.max_alibi_bias())
        if cfg.get("vocab_size"):
            w.add_vocab_size(int(cfg["vocab_size"]))
