"""DeepSeek-V2 and V3 (``DeepseekV2ForCausalLM``, ``DeepseekV3ForCausalLM`` -> ``deepseek2``).

Multi-head latent attention: llama.cpp runs it as one shared key/value head of width
``kv_lora_rank + qk_rope_head_dim`` and decompresses per head with ``attn_k_b``/``attn_v_b``,
the two halves of ``kv_b_proj`` (rows per head: ``qk_nope_head_dim`` key rows, then
``v_head_dim`` value rows; the key half is stored transposed). Queries come from ``q_proj``, or
through a low-rank ``q_a_proj``/``q_b_proj`` pair when ``q_lora_rank`` is set. RoPE pairs are
interleaved in both (no permutation). The first ``first_k_dense_replace`` blocks are dense;
the others route over ``n_routed_experts`` plus ``n_shared_experts`` always-on experts.

Routing as transformers computes it: V2 takes a softmax, keeps the top k without renormalising
and scales by ``routed_scaling_factor``; V3 takes a sigmoid, chooses experts by score plus
``e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups (ranked by the
sum of their two best scores), renormalises if ``norm_topk_prob`` and scales. Multi-token
prediction layers (blocks past ``num_hidden_layers``) are not converted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import gguf

from converters.archs.base import TensorPlan, derived_plan
from converters.archs.moe import MT, MoEConverter, block_name, flat
from converters.checkpoint import Checkpoint, TensorRef
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)


class DeepseekV2Converter(MoEConverter):
    hf_architectures = ("DeepseekV2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.DEEPSEEK2
    gating = gguf.ExpertGatingFuncType.SOFTMAX

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        cfg = self.cfg
        self.kv_lora_rank = int(self.require("kv_lora_rank"))
        self.rope_dim = int(self.require("qk_rope_head_dim"))
        self.nope_dim = int(self.require("qk_nope_head_dim"))
        self.v_head_dim = int(self.require("v_head_dim"))
        # One latent key/value head; `head_dim` in these configs is the RoPE width only.
        self.n_head_kv = 1
        self.head_dim = self.rope_dim
        self.cfg = {k: v for k, v in cfg.items() if k != "head_dim"}

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        cfg = self.cfg
        w.add_leading_dense_block_count(int(cfg.get("first_k_dense_replace") or 0))
        w.add_q_lora_rank(int(cfg.get("q_lora_rank") or 0))
        w.add_kv_lora_rank(self.kv_lora_rank)
        w.add_key_length(self.kv_lora_rank + self.rope_dim)
        w.add_value_length(self.kv_lora_rank)
        w.add_key_length_mla(self.nope_dim + self.rope_dim)
        w.add_value_length_mla(self.v_head_dim)
        mscale_all = self.rope.get("mscale_all_dim")
        if mscale_all is not None:
            # llama.cpp's deepseek2 loader divides this key by 0.1 (its converter's convention)
            w.add_rope_scaling_yarn_log_mul(0.1 * float(mscale_all))

    def add_routing_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        w.add_expert_feed_forward_length(int(self.require("moe_intermediate_size")))
        w.add_expert_shared_count(int(cfg.get("n_shared_experts") or 0))
        w.add_expert_weights_scale(float(cfg.get("routed_scaling_factor") or 1.0))
        w.add_expert_weights_norm(self.normalises())
        w.add_expert_gating_func(self.gating)
        self.add_groups(w)

    def normalises(self) -> bool:
        # transformers' DeepseekV2 router never renormalises the top-k weights
        return False

    def add_groups(self, w: gguf.GGUFWriter) -> None:
        n_group = int(self.cfg.get("n_group") or 1)
        if self.cfg.get("topk_method", "greedy") == "greedy" or n_group <= 1:
            return
        logger.warning(
            "topk_method=%s: llama.cpp ranks expert groups by the sum of their two best "
            "scores, DeepSeek-V2 by the best one; expert choices may differ",
            self.cfg.get("topk_method"),
        )
        w.add_expert_group_count(n_group)
        w.add_expert_group_used_count(int(self.require("topk_group")))

    def skip(self, hf_name: str) -> bool:
        if ".layers." in hf_name and self._block(hf_name) >= self.n_layers:
            return True  # multi-token prediction block
        return super().skip(hf_name)

    @staticmethod
    def _block(hf_name: str) -> int:
        return int(hf_name.split(".layers.")[1].split(".")[0])

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if hf_name.endswith("self_attn.kv_b_proj.weight"):
            yield from self.split_kv_b(self._block(hf_name), ref)
        elif hf_name.endswith("mlp.gate.e_score_correction_bias"):
            yield flat(ref, block_name(MT.FFN_EXP_PROBS_B, self._block(hf_name), "bias"))
        else:
            yield from super().tensor(hf_name, ref)

    def split_kv_b(self, bid: int, ref: TensorRef) -> Iterable[TensorPlan]:
        """``kv_b_proj`` ``(n_head * (nope + v), kv_lora)`` -> ``attn_k_b`` ``(n_head, kv_lora,
        nope)`` (transposed per head) and ``attn_v_b`` ``(n_head, v, kv_lora)``."""
        n_head, nope, v, rank = self.n_head, self.nope_dim, self.v_head_dim, self.kv_lora_rank

        def per_head(a):
            return a.reshape(n_head, nope + v, rank)

        yield derived_plan(block_name(MT.ATTN_K_B, bid), (n_head, rank, nope), ref,
                           lambda a: per_head(a)[:, :nope].transpose(0, 2, 1))  # fmt: skip
        yield derived_plan(block_name(MT.ATTN_V_B, bid), (n_head, v, rank), ref,
                           lambda a: per_head(a)[:, nope:])  # fmt: skip


class DeepseekV3Converter(DeepseekV2Converter):
    hf_architectures = ("DeepseekV3ForCausalLM",)
    # transformers' DeepseekV3 router is a sigmoid; its config has no scoring_func key
    gating = gguf.ExpertGatingFuncType.SIGMOID

    def normalises(self) -> bool:
        return bool(self.cfg.get("norm_topk_prob", True))

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        scoring = str(self.cfg.get("scoring_func") or "sigmoid").lower()
        if scoring not in _GATING:
            raise ConversionError(f"scoring_func={scoring!r} is not supported")
        self.gating = _GATING[scoring]

    def add_groups(self, w: gguf.GGUFWriter) -> None:
        n_group = int(self.cfg.get("n_group") or 1)
        used = int(self.cfg.get("topk_group") or n_group)
        if 1 < n_group and used < n_group:  # else every group is always eligible
            w.add_expert_group_count(n_group)
            w.add_expert_group_used_count(used)


_GATING = {
    "sigmoid": gguf.ExpertGatingFuncType.SIGMOID,
    "softmax": gguf.ExpertGatingFuncType.SOFTMAX,
}
