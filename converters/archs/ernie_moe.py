"""ERNIE 4.5 MoE (``Ernie4_5_MoeForCausalLM`` -> ``ernie4_5-moe``).

Interleaved RoPE pairs (llama.cpp's NORM RoPE as stored, no permutation). Blocks before
``moe_layer_start_index`` are dense; later ones route with a softmax, choose experts by
probability plus the ``moe_statics`` correction bias, and renormalise the chosen (unbiased)
probabilities, as llama.cpp's graph does with ``exp_probs_b``. Shared experts are one MLP of
``moe_intermediate_size * moe_num_shared_experts`` rows (written as that, not llama.cpp's own
converter's ``intermediate_size // num_key_value_heads`` estimate). llama.cpp loads expert
tensors for every block from the start index on, so sparse-step or end-index layouts that leave
later blocks dense are refused. Multi-token prediction blocks are not converted.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf

from converters.archs.base import TensorPlan
from converters.archs.moe import MT, MoEConverter, block_name, flat
from converters.checkpoint import Checkpoint, TensorRef


class Ernie45MoeConverter(MoEConverter):
    hf_architectures = ("Ernie4_5_MoeForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.ERNIE4_5_MOE

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        why = "llama.cpp makes every block from moe_layer_start_index on a MoE block"
        self.refuse_unless("moe_layer_interval", 1, 1, why)
        end = self.cfg.get("moe_layer_end_index")
        if end is not None and int(end) not in (-1, self.n_layers - 1):
            self.refuse_unless("moe_layer_end_index", self.n_layers - 1, None, why)
        self.refuse_unless("use_bias", False, False, "llama.cpp's ernie4_5 graphs have no biases")

    def skip(self, hf_name: str) -> bool:
        # multi-token prediction blocks (model.mtp_block.*, mtp_emb_norm, ...) are not converted
        return hf_name.startswith("model.mtp_") or super().skip(hf_name)

    def add_routing_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        moe_ff = int(self.require("moe_intermediate_size"))
        w.add_expert_feed_forward_length(moe_ff)
        w.add_interleave_moe_layer_step(int(cfg.get("moe_layer_interval") or 1))
        w.add_leading_dense_block_count(int(cfg.get("moe_layer_start_index") or 0))
        shared = int(cfg.get("moe_num_shared_experts") or 0)
        w.add_expert_shared_count(shared)
        if shared:
            w.add_expert_shared_feed_forward_length(moe_ff * shared)

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if hf_name.endswith("mlp.moe_statics.e_score_correction_bias"):
            bid = int(hf_name.split("layers.")[1].split(".")[0])
            yield flat(ref, block_name(MT.FFN_EXP_PROBS_B, bid, "bias"))
        else:
            yield from super().tensor(hf_name, ref)
