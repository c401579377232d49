"""Granite MoE (``GraniteMoeForCausalLM``, ``GraniteMoeSharedForCausalLM`` -> ``granitemoe``).

Llama attention (q/k permuted) with Granite's four µP multipliers, and experts stored fused:
``block_sparse_moe.input_linear`` ``(E, 2F, H)`` holds each expert's gate rows then its up rows,
``output_linear`` ``(E, H, F)`` the down projections (transformers 5 names them
``experts.gate_up_proj``/``experts.down_proj``; both spellings are read). Routing is top-k then a
softmax over the chosen logits, which is llama.cpp's softmax + renormalise. The shared variant
adds an always-on MLP, ``shared_mlp.input_linear`` ``(2S, H)`` split the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import gguf

from converters.archs.base import TensorPlan, derived_plan
from converters.archs.granite import GraniteConverter
from converters.archs.moe import MT, MoEConverter, block_name
from converters.checkpoint import TensorRef


class GraniteMoeConverter(MoEConverter, GraniteConverter):
    hf_architectures: ClassVar[tuple[str, ...]] = (
        "GraniteMoeForCausalLM",
        "GraniteMoeSharedForCausalLM",
    )
    gguf_arch = gguf.MODEL_ARCH.GRANITE_MOE

    def add_routing_metadata(self, w: gguf.GGUFWriter) -> None:
        shared = int(self.cfg.get("shared_intermediate_size") or 0)
        if shared:
            w.add_expert_shared_feed_forward_length(shared)

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        bid = int(hf_name.split("layers.")[1].split(".")[0]) if "layers." in hf_name else -1
        if hf_name.endswith("block_sparse_moe.input_linear.weight"):
            yield from self.expert_tensor(bid, "gate_up_proj", "weight", ref)
        elif hf_name.endswith("block_sparse_moe.output_linear.weight"):
            yield from self.expert_tensor(bid, "down_proj", "weight", ref)
        elif hf_name.endswith("block_sparse_moe.router.weight"):  # transformers 5 name
            yield TensorPlan(block_name(MT.FFN_GATE_INP, bid), ref.shape, ref.dtype, ref.load, True)
        elif hf_name.endswith("shared_mlp.input_linear.weight"):
            rows, cols = ref.shape
            half = rows // 2
            shape = (half, cols)
            yield derived_plan(block_name(MT.FFN_GATE_SHEXP, bid), shape, ref, lambda a: a[:half])
            yield derived_plan(block_name(MT.FFN_UP_SHEXP, bid), shape, ref, lambda a: a[half:])
        else:
            yield from super().tensor(hf_name, ref)
