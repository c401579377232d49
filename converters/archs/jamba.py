"""JambaForCausalLM: Mamba-1 layers with attention every ``attn_layer_period`` layers and MoE
feed-forwards every ``expert_layer_period`` layers.

llama.cpp reads the layer pattern as a per-layer KV head count (0 = Mamba layer) and finds the
MoE layers by their tensors: the per-expert weights arrive stacked from the base converter
(``source_tensors``). The Mamba mixers are Mamba-1 (``A = -exp(A_log)``, conv1d without its
channel axis) plus RMS norms on dt, B and C, which gguf-py's map names. No RoPE.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf

from converters.archs.base import ArchConverter, TensorPlan
from converters.archs.mamba import computed, neg_exp, reshaped
from converters.checkpoint import TensorRef
from ggufworker.errors import ConversionError


class JambaConverter(ArchConverter):
    hf_architectures = ("JambaForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.JAMBA

    def layer_kv_heads(self) -> list[int]:
        period = int(self.require("attn_layer_period"))
        offset = int(self.cfg.get("attn_layer_offset") or 0)
        return [self.n_head_kv if i % period == offset else 0 for i in range(self.n_layers)]

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        if cfg.get("mamba_proj_bias") or cfg.get("mamba_conv_bias") is False:
            raise ConversionError("llama.cpp's Jamba needs conv biases and no projection biases")
        w.add_block_count(self.n_layers)
        w.add_context_length(int(cfg.get("max_position_embeddings") or 1 << 18))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(int(self.require("intermediate_size")))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.layer_kv_heads())
        w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps") or 1e-6))
        w.add_vocab_size(int(self.require("vocab_size")))
        w.add_ssm_conv_kernel(int(cfg.get("mamba_d_conv") or 4))
        w.add_ssm_inner_size(int(cfg.get("mamba_expand") or 2) * self.n_embd)
        w.add_ssm_state_size(int(cfg.get("mamba_d_state") or 16))
        rank = cfg.get("mamba_dt_rank")
        w.add_ssm_time_step_rank(rank if isinstance(rank, int) else -(self.n_embd // -16))
        w.add_expert_count(int(self.require("num_experts")))
        w.add_expert_used_count(int(self.require("num_experts_per_tok")))

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if hf_name.endswith(".A_log"):
            yield computed(self.gguf_name(hf_name), ref, ref.shape, neg_exp)
        elif hf_name.endswith("conv1d.weight"):
            name = self.gguf_name(hf_name)
            yield reshaped(name, ref, (ref.shape[0], ref.shape[-1]), keep_f32=True)
        else:
            plan = self.passthrough(hf_name, ref)
            if plan.name.endswith((".ssm_d", ".ssm_conv1d.bias", "ffn_gate_inp.weight")):
                plan = TensorPlan(plan.name, plan.shape, plan.dtype, plan.load, True)
            yield plan
