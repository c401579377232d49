"""FalconForCausalLM / RWForCausalLM -> llama.cpp ``falcon``.

Three fused-QKV layouts exist, all "per KV group: its query heads, one key, one value":
Falcon-7B's multi-query layout (one group), the 40B/180B "new decoder architecture"
(``num_kv_heads`` groups, with separate LayerNorms for attention and MLP) and the original
multi-head layout (one group per head). llama.cpp reads ``[all q | all k | all v]``, so rows are
regrouped. The KV head count follows the layout, not ``num_kv_heads`` alone: transformers' config
sets ``num_kv_heads = num_attention_heads`` whenever it is unset, and saves it, so a multi-query
checkpoint's config.json names as many KV heads as query heads while it has one. llama.cpp's
converter takes that value, and fails on such checkpoints; it also ignores ``rope_theta`` and
``ffn_hidden_size``, which are written here.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import gguf

from converters.archs.base import GELU_ACTIVATIONS, ArchConverter, TensorPlan, regroup_qkv
from converters.checkpoint import Checkpoint, TensorRef
from ggufworker.errors import ConversionError


class FalconConverter(ArchConverter):
    hf_architectures = ("FalconForCausalLM", "RWForCausalLM")
    gguf_arch = gguf.MODEL_ARCH.FALCON
    layer_norm_eps_keys = ("layer_norm_epsilon",)
    # RWForCausalLM (remote-code) configs use the short names
    config_aliases = {
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "num_kv_heads": "n_head_kv",
        "intermediate_size": "ffn_hidden_size",
    }

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        cfg = self.cfg
        for key, what in (("alibi", "ALiBi"), ("bias", "linear biases")):
            if cfg.get(key):
                raise ConversionError(
                    f"config.json {key}=true is not supported: "
                    f"llama.cpp's falcon graph has no {what}"
                )
        if cfg.get("parallel_attn") is False:
            raise ConversionError(
                "config.json parallel_attn=false is not supported: llama.cpp's falcon graph "
                "always runs attention and MLP in parallel"
            )
        self.check_activation("activation", "gelu", GELU_ACTIVATIONS)
        # RefinedWeb is the remote-code name of the 40B layout, RefinedWebModel of the 7B one
        new_decoder = (
            bool(cfg.get("new_decoder_architecture")) or cfg.get("model_type") == "RefinedWeb"
        )
        if new_decoder:
            self.n_head_kv = int(self.require("num_kv_heads"))
        elif cfg.get("multi_query", True):
            self.n_head_kv = 1
        else:
            self.n_head_kv = self.n_head
        if self.n_head % self.n_head_kv:
            raise ConversionError(
                f"num_attention_heads={self.n_head} is not a multiple of "
                f"num_kv_heads={self.n_head_kv}"
            )
        cfg["intermediate_size"] = cfg.get("intermediate_size") or 4 * self.n_embd
        # not in remote-code configs; Falcon was trained with 2048 positions
        cfg["max_position_embeddings"] = cfg.get("max_position_embeddings") or 2048

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        # the row order of attn_qkv (llama.cpp's name for the regrouped layout)
        w.add_tensor_data_layout("jploski")

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if hf_name.endswith("query_key_value.weight") and self.n_head_kv > 1:
            fn = partial(regroup_qkv, n_head=self.n_head, n_head_kv=self.n_head_kv,
                         head_dim=self.head_dim)  # fmt: skip
            yield self.passthrough(hf_name, ref, fn)
        else:
            yield self.passthrough(hf_name, ref)
