"""Qwen2-MoE and Qwen3-MoE (``Qwen2MoeForCausalLM`` -> ``qwen2moe``, ``Qwen3MoeForCausalLM`` ->
``qwen3moe``).

Both are NEOX-RoPE decoders (no q/k permutation) with softmax routing. llama.cpp hard-codes the
renormalisation of the top-k weights (off for ``qwen2moe``, on for ``qwen3moe``) and treats
every layer as sparse, so configs asking otherwise are refused. Qwen2-MoE adds a shared expert
whose output is scaled by ``sigmoid(shared_expert_gate(x))``; its ``(1, H)`` gate is written as
the 1-D ``ffn_gate_inp_shexp`` llama.cpp declares.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf

from converters.archs.base import TensorPlan
from converters.archs.moe import MoEConverter, flat
from converters.checkpoint import Checkpoint, TensorRef


class _QwenMoeConverter(MoEConverter):
    #: llama.cpp's fixed choice for this architecture
    norm_topk_prob: bool = False

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        why = "llama.cpp treats every layer of this architecture as a sparse MoE layer"
        self.refuse_unless("decoder_sparse_step", 1, 1, why)
        self.refuse_unless("mlp_only_layers", [], [], why)
        self.refuse_unless(
            "norm_topk_prob", self.norm_topk_prob, False,
            f"llama.cpp's {self.arch_name} graph hard-codes top-k renormalisation "
            f"{'on' if self.norm_topk_prob else 'off'}",
        )  # fmt: skip

    def add_routing_metadata(self, w: gguf.GGUFWriter) -> None:
        w.add_expert_feed_forward_length(int(self.require("moe_intermediate_size")))


class Qwen2MoeConverter(_QwenMoeConverter):
    hf_architectures = ("Qwen2MoeForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2MOE
    output_required = True

    def add_routing_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_routing_metadata(w)
        w.add_expert_shared_feed_forward_length(
            int(self.require("shared_expert_intermediate_size"))
        )

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if hf_name.endswith("mlp.shared_expert_gate.weight"):
            yield flat(ref, self.gguf_name(hf_name))
        else:
            yield from super().tensor(hf_name, ref)


class Qwen3MoeConverter(_QwenMoeConverter):
    hf_architectures = ("Qwen3MoeForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
    norm_topk_prob = True
