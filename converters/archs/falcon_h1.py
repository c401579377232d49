"""FalconH1ForCausalLM: attention and a Mamba-2 mixer side by side in every layer.

transformers scales activations with µP multipliers that llama.cpp's graph does not know; each is
a constant factor on one linear map, so it is folded into that map's weights here:

- embeddings x ``embedding_multiplier``; LM head x ``lm_head_multiplier`` (a tied head becomes
  its own ``output.weight``, since the two scales differ);
- q and v x ``attention_in_multiplier`` (the scale of the attention input), k x that times
  ``key_multiplier``, o x ``attention_out_multiplier``;
- the Mamba in-projection x ``ssm_in_multiplier`` and, row block by row block, x the five
  ``ssm_multipliers`` of its z, x, B, C and dt outputs; the out-projection x ``ssm_out_multiplier``;
- the MLP gate x ``mlp_multipliers[0]``, down x ``mlp_multipliers[1]``.

RoPE is NEOX-style in both, so q/k need no permutation. llama.cpp gates the Mamba output before
its optional group norm; transformers can norm first (``mamba_norm_before_gate``), which is
another function, so such checkpoints are refused.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf
import numpy as np

from converters.archs.base import ArchConverter, TensorPlan
from converters.archs.mamba import computed, mamba2_mixer_tensor
from converters.checkpoint import Checkpoint, TensorRef
from ggufworker.errors import ConversionError


class FalconH1Converter(ArchConverter):
    hf_architectures = ("FalconH1ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.FALCON_H1

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        cfg = self.cfg
        self.d_ssm = int(cfg.get("mamba_d_ssm") or int(cfg.get("mamba_expand") or 2) * self.n_embd)
        self.n_group = int(cfg.get("mamba_n_groups") or 1)
        self.d_state = int(self.require("mamba_d_state"))
        self.n_ssm_head = int(self.require("mamba_n_heads"))
        if self.d_ssm % int(cfg.get("mamba_d_head") or 64):
            raise ConversionError("mamba_d_ssm must be a multiple of mamba_d_head")
        if cfg.get("mamba_rms_norm") and cfg.get("mamba_norm_before_gate", True):
            raise ConversionError(
                "Falcon-H1 with mamba_rms_norm and mamba_norm_before_gate: llama.cpp applies "
                "the gate before the norm, which computes another function"
            )
        for key in ("projectors_bias", "attention_bias", "mlp_bias"):
            if cfg.get(key):
                raise ConversionError(f"Falcon-H1 with {key} is not supported by this converter")
        self.check_activation("hidden_act", "silu", ("silu",))

    def mult(self, key: str) -> float:
        value = self.cfg.get(key)
        return 1.0 if value is None else float(value)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        cfg = self.cfg
        if not cfg.get("head_dim"):  # else the base class wrote them
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        w.add_ssm_conv_kernel(int(cfg.get("mamba_d_conv") or 4))
        w.add_ssm_inner_size(self.d_ssm)
        w.add_ssm_state_size(self.d_state)
        w.add_ssm_time_step_rank(self.n_ssm_head)
        w.add_ssm_group_count(self.n_group)

    def row_scales(self, hf_name: str) -> np.ndarray | float | None:
        """The factor (one per output row, or one for all) a weight is multiplied by."""
        mlp = self.cfg.get("mlp_multipliers") or [1.0, 1.0]
        attn_in = self.mult("attention_in_multiplier")
        table = {
            "self_attn.q_proj.weight": attn_in,
            "self_attn.k_proj.weight": attn_in * self.mult("key_multiplier"),
            "self_attn.v_proj.weight": attn_in,
            "self_attn.o_proj.weight": self.mult("attention_out_multiplier"),
            "mamba.out_proj.weight": self.mult("ssm_out_multiplier"),
            "feed_forward.gate_proj.weight": float(mlp[0]),
            "feed_forward.down_proj.weight": float(mlp[1]),
            "lm_head.weight": self.mult("lm_head_multiplier"),
            "embed_tokens.weight": self.mult("embedding_multiplier"),
        }
        for suffix, factor in table.items():
            if hf_name.endswith(suffix):
                return factor
        if hf_name.endswith("mamba.in_proj.weight"):
            return self._in_proj_scales()
        return None

    def _in_proj_scales(self) -> np.ndarray:
        z, x, b, c, dt = (float(m) for m in (self.cfg.get("ssm_multipliers") or [1.0] * 5))
        gs = self.n_group * self.d_state
        sizes = (self.d_ssm, self.d_ssm, gs, gs, self.n_ssm_head)
        scales = np.repeat(np.array([z, x, b, c, dt], dtype=np.float32), sizes)
        return (scales * np.float32(self.mult("ssm_in_multiplier")))[:, None]

    def scaled(self, name: str, ref: TensorRef, factor: np.ndarray | float) -> TensorPlan:
        if isinstance(factor, np.ndarray) and factor.shape[0] != ref.shape[0]:
            raise ConversionError(f"{ref.name}: {ref.shape[0]} rows, expected {factor.shape[0]}")
        scale = np.asarray(factor, dtype=np.float32)
        plan = computed(name, ref, ref.shape, lambda d: d * scale)
        return TensorPlan(plan.name, plan.shape, plan.dtype, plan.load, False)  # not kept f32

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if ".mamba." in hf_name:
            plan = mamba2_mixer_tensor(self, hf_name, ref, n_group=self.n_group)
            if plan is not None:
                yield plan
                return
        factor = self.row_scales(hf_name)
        if factor is None:
            yield self.passthrough(hf_name, ref)
            return
        yield self.scaled(self.gguf_name(hf_name), ref, factor)
        tied = "lm_head.weight" not in self.ckpt.tensors or self.cfg.get("tie_word_embeddings")
        if hf_name.endswith("embed_tokens.weight") and tied:
            # A tied head is scaled by lm_head_multiplier, not by the embedding's factor.
            yield self.scaled("output.weight", ref, self.mult("lm_head_multiplier"))
