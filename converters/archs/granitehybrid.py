"""GraniteMoeHybridForCausalLM (Granite 4.0 H) and BambaForCausalLM -> ``granitehybrid``.

Mamba-2 layers with a few attention layers between them. llama.cpp reads which layer is which
from a per-layer KV head count (0 = Mamba-2 layer). transformers 5 saves GraniteMoeHybrid's
``layer_types`` as ``linear_attention``/``full_attention`` (older configs: ``mamba``/
``attention``); Bamba lists ``attn_layer_indices``. Mamba-2 tensors follow
:mod:`converters.archs.mamba`.

Feed-forward: GraniteMoeHybrid fuses gate and up projections (``input_linear``, gate first),
for the routed experts (already stacked, ``(E, 2F, H)``) and for the shared MLP, which is the
whole FFN when the model has no experts (Granite 4.0 H Micro). Bamba has a plain SwiGLU MLP.

RoPE: Granite 4.0 H uses none unless ``position_embedding_type`` is ``rope``; Bamba always
rotates, but only the first half of each head (``partial_rotary_factor`` 0.5). llama.cpp's
granitehybrid rope rotates adjacent pairs while transformers rotates halves, so the rotated rows
of q/k are permuted (only those rows: the rest of each head passes through unrotated).
llama.cpp is told with ``rope.scaling.finetuned``, the switch it reads for rope on or off.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property, partial

import gguf
import numpy as np

from converters.archs.base import ArchConverter, TensorPlan
from converters.archs.granite import MUP_DEFAULTS
from converters.archs.mamba import STATE_CONTEXT, mamba2_mixer_tensor
from converters.checkpoint import Checkpoint, TensorRef
from ggufworker.errors import ConversionError

ATTENTION_TYPES = ("attention", "full_attention")
MAMBA_TYPES = ("mamba", "linear_attention")


def partial_rope_permute(data: np.ndarray, n_head: int, n_rot: int) -> np.ndarray:
    """Reorder the first ``n_rot`` rows of each head from halves to adjacent pairs."""
    shape = data.shape
    heads = data.reshape(n_head, shape[0] // n_head, *shape[1:])
    rot = heads[:, :n_rot].reshape(n_head, 2, n_rot // 2, *shape[1:]).swapaxes(1, 2)
    out = heads.copy()
    out[:, :n_rot] = rot.reshape(n_head, n_rot, *shape[1:])
    return out.reshape(shape)


def _tensor_name(kind: gguf.MODEL_TENSOR, bid: int) -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"


def _split_rows(
    name: str, ref: TensorRef, axis: int, start: int, stop: int, *, keep_f32: bool = False
) -> TensorPlan:
    """Rows ``start:stop`` of ``ref`` along ``axis`` (one half of a fused gate/up tensor)."""
    shape = list(ref.shape)
    shape[axis] = stop - start
    index = [slice(None)] * len(shape)
    index[axis] = slice(start, stop)
    cut = tuple(index)
    return TensorPlan(
        name, tuple(shape), ref.dtype, lambda: np.ascontiguousarray(ref.load()[cut]), keep_f32
    )


class GraniteHybridConverter(ArchConverter):
    hf_architectures = ("GraniteMoeHybridForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GRANITE_HYBRID
    #: Granite's µP multipliers (Bamba has none).
    has_mup = True

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        cfg = self.cfg
        self.n_group = int(cfg.get("mamba_n_groups") or 1)
        self.d_inner = int(cfg.get("mamba_expand") or 2) * self.n_embd
        self.n_ssm_head = int(self.require("mamba_n_heads"))
        if self.d_inner != 2 * self.n_embd:
            raise ConversionError("llama.cpp's granitehybrid supports only mamba_expand = 2")
        if self.n_ssm_head * int(cfg.get("mamba_d_head") or 64) != self.d_inner:
            raise ConversionError("need mamba_n_heads * mamba_d_head == mamba_expand * hidden_size")
        if cfg.get("mamba_proj_bias"):
            raise ConversionError("Mamba projection biases are not supported by llama.cpp")
        self.check_activation("hidden_act", "silu", ("silu",))
        self.n_expert = int(cfg.get("num_local_experts") or 0)

    @cached_property
    def attention_layers(self) -> frozenset[int]:
        cfg = self.cfg
        layer_types = cfg.get("layer_types")
        if layer_types:
            unknown = set(layer_types) - {*ATTENTION_TYPES, *MAMBA_TYPES}
            if unknown or len(layer_types) != self.n_layers:
                raise ConversionError(f"unsupported layer_types {sorted(unknown)}")
            return frozenset(i for i, t in enumerate(layer_types) if t in ATTENTION_TYPES)
        if cfg.get("attn_layer_indices") is not None:
            return frozenset(int(i) for i in cfg["attn_layer_indices"])
        period, offset = cfg.get("attn_layer_period"), cfg.get("attn_layer_offset")
        if period:
            return frozenset(i for i in range(self.n_layers) if i % int(period) == int(offset or 0))
        raise ConversionError("config names no attention layers (layer_types, attn_layer_indices)")

    @property
    def uses_rope(self) -> bool:
        return self.cfg.get("position_embedding_type") == "rope"

    def ffn_length(self) -> int:
        if self.n_expert:
            return int(self.require("intermediate_size"))
        return int(self.cfg.get("shared_intermediate_size") or self.require("intermediate_size"))

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        w.add_block_count(self.n_layers)
        if self.uses_rope:
            w.add_context_length(int(cfg.get("max_position_embeddings") or STATE_CONTEXT))
        else:
            w.add_context_length(STATE_CONTEXT)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.ffn_length())
        w.add_head_count(self.n_head)
        w.add_head_count_kv(
            [self.n_head_kv if i in self.attention_layers else 0 for i in range(self.n_layers)]
        )
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps") or 1e-6))
        w.add_vocab_size(int(self.require("vocab_size")))
        w.add_rope_scaling_finetuned(self.uses_rope)
        if self.uses_rope:
            w.add_rope_dimension_count(self.rope_dims())
            self.add_rope_metadata(w, self.rope)
        w.add_ssm_conv_kernel(int(cfg.get("mamba_d_conv") or 4))
        w.add_ssm_state_size(int(self.require("mamba_d_state")))
        w.add_ssm_group_count(self.n_group)
        w.add_ssm_inner_size(self.d_inner)
        w.add_ssm_time_step_rank(self.n_ssm_head)
        if self.has_mup:
            mup = {k: float(d if cfg.get(k) is None else cfg[k]) for k, d in MUP_DEFAULTS.items()}
            w.add_embedding_scale(mup["embedding_multiplier"])
            w.add_residual_scale(mup["residual_multiplier"])
            w.add_attention_scale(mup["attention_multiplier"])
            w.add_logit_scale(mup["logits_scaling"])
        if self.n_expert:
            w.add_expert_count(self.n_expert)
            w.add_expert_used_count(int(self.require("num_experts_per_tok")))
            if cfg.get("shared_intermediate_size"):
                w.add_expert_shared_feed_forward_length(int(cfg["shared_intermediate_size"]))

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if ".mamba." in hf_name:
            plan = mamba2_mixer_tensor(self, hf_name, ref, n_group=self.n_group)
            yield plan if plan is not None else self.passthrough(hf_name, ref)
            return
        if self.uses_rope:
            n_rot = self.rope_dims()
            for proj, n_head in (("q_proj", self.n_head), ("k_proj", self.n_head_kv)):
                if hf_name.endswith(f"self_attn.{proj}.weight"):
                    fn = partial(partial_rope_permute, n_head=n_head, n_rot=n_rot)
                    yield self.passthrough(hf_name, ref, fn)
                    return
        if hf_name.endswith("input_linear.weight"):
            yield from self._gate_up(hf_name, ref)
            return
        if hf_name.endswith("shared_mlp.output_linear.weight") and not self.n_expert:
            yield self.passthrough_as(_tensor_name(gguf.MODEL_TENSOR.FFN_DOWN, _bid(hf_name)), ref)
            return
        plan = self.passthrough(hf_name, ref)
        if plan.name.endswith("ffn_gate_inp.weight"):  # the router stays float32
            plan = TensorPlan(plan.name, plan.shape, plan.dtype, plan.load, True)
        yield plan

    def passthrough_as(self, name: str, ref: TensorRef) -> TensorPlan:
        return TensorPlan(name, ref.shape, ref.dtype, ref.load, self.keeps_f32(name, ref.shape))

    def _gate_up(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        bid = _bid(hf_name)
        t = gguf.MODEL_TENSOR
        if "block_sparse_moe" in hf_name:  # (E, 2F, H)
            gate, up, axis = t.FFN_GATE_EXP, t.FFN_UP_EXP, 1
        elif self.n_expert:
            gate, up, axis = t.FFN_GATE_SHEXP, t.FFN_UP_SHEXP, 0
        else:
            gate, up, axis = t.FFN_GATE, t.FFN_UP, 0
        rows = ref.shape[axis]
        if rows % 2:
            raise ConversionError(f"{hf_name}: fused gate/up has an odd size {rows}")
        half = rows // 2
        yield _split_rows(_tensor_name(gate, bid), ref, axis, 0, half)
        yield _split_rows(_tensor_name(up, bid), ref, axis, half, rows)


class BambaConverter(GraniteHybridConverter):
    hf_architectures = ("BambaForCausalLM",)
    has_mup = False

    @property
    def uses_rope(self) -> bool:
        return True

    def rope_dims(self) -> int:
        if self.cfg.get("attn_rotary_emb"):  # older Bamba configs name the count directly
            return int(self.cfg["attn_rotary_emb"])
        return super().rope_dims()

    def ffn_length(self) -> int:
        return int(self.require("intermediate_size"))


def _bid(hf_name: str) -> int:
    parts = hf_name.split(".")
    return int(parts[parts.index("layers") + 1])
