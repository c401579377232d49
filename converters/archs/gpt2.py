"""GPT2LMHeadModel -> llama.cpp ``gpt2``.

Learned absolute positions (``wpe``, as many rows as ``n_positions``, which llama.cpp takes as
its training context), pre-LayerNorm blocks, a fused QKV projection. GPT-2's ``Conv1D`` layers
store weights as (in, out), so ``c_attn``/``c_proj``/``c_fc`` are transposed. llama.cpp's own
converter reads ``n_ctx``, which transformers 5 configs no longer have, and writes ``4 * n_embd``
as the MLP width whatever ``n_inner`` says; both come from the config here.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf

from converters.archs.base import ArchConverter, TensorPlan
from converters.checkpoint import Checkpoint, TensorRef
from ggufworker.errors import ConversionError

#: HF spellings of GPT-2-style configs
GPT2_CONFIG_ALIASES = {
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "intermediate_size": "n_inner",
}


class GPT2Converter(ArchConverter):
    hf_architectures = ("GPT2LMHeadModel",)
    gguf_arch = gguf.MODEL_ARCH.GPT2
    config_aliases = GPT2_CONFIG_ALIASES
    layer_norm_eps_keys = ("layer_norm_epsilon",)
    # attention-mask buffers kept by older checkpoints
    skip_suffixes = (".attn.bias", ".attn.masked_bias")
    conv1d_suffixes: tuple[str, ...] = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        cfg = self.cfg
        cfg["intermediate_size"] = cfg.get("intermediate_size") or 4 * self.n_embd
        self.require("max_position_embeddings")
        if cfg.get("scale_attn_by_inverse_layer_idx"):
            raise ConversionError(
                "config.json scale_attn_by_inverse_layer_idx=true is not supported by "
                f"llama.cpp's {self.arch_name} graph"
            )
        if cfg.get("scale_attn_weights") is False:
            raise ConversionError(
                f"config.json scale_attn_weights=false is not supported by llama.cpp's "
                f"{self.arch_name} graph (it scales by 1/sqrt(head_dim))"
            )
        # llama.cpp computes the tanh-approximated GELU these name
        self.check_activation("activation_function", self.default_activation,
                              ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"))  # fmt: skip

    default_activation = "gelu_new"

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        w.add_block_count(self.n_layers)
        w.add_context_length(int(cfg["max_position_embeddings"]))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(int(cfg["intermediate_size"]))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_eps(float(cfg.get("layer_norm_epsilon") or 1e-5))
        if cfg.get("vocab_size"):
            w.add_vocab_size(int(cfg["vocab_size"]))

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if hf_name.endswith(self.conv1d_suffixes):
            yield self.transposed(hf_name, ref)
        else:
            yield self.passthrough(hf_name, ref)
