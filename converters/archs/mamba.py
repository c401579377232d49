"""State-space models: MambaForCausalLM (Mamba-1) and Mamba2ForCausalLM.

Both have no attention: every block is a selective-scan mixer. Hugging Face stores
``A_log`` where llama.cpp's scan reads ``A = -exp(A_log)``, and the depthwise conv1d weight
with a singleton channel axis that llama.cpp does not have. Mamba-2 adds per-head ``A``/``D``
(stored as column vectors), a ``dt_bias`` that llama.cpp names ``ssm_dt.bias``, and a gated
group RMSNorm whose weight llama.cpp reads as one row per group. The scan and the conv weights
stay float32 (llama.cpp's CPU scan and conv kernels read float32). The hybrid families reuse the
tensor helpers here for their Mamba-2 layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import gguf
import numpy as np

from converters.archs.base import ArchConverter, TensorPlan
from converters.checkpoint import Checkpoint, TensorRef, to_f32
from ggufworker.errors import ConversionError

# Nominal context length: a recurrent state has no trained position limit.
STATE_CONTEXT = 1 << 20


def computed(
    name: str, ref: TensorRef, shape: tuple[int, ...], fn: Callable[[np.ndarray], np.ndarray]
) -> TensorPlan:
    """A tensor that needs arithmetic: ``fn`` of the float32 data, reshaped, kept float32."""

    def load() -> np.ndarray:
        return np.ascontiguousarray(fn(to_f32(ref.load(), ref.dtype)).reshape(shape))

    return TensorPlan(name, shape, "F32", load, True)


def reshaped(name: str, ref: TensorRef, shape: tuple[int, ...], *, keep_f32: bool) -> TensorPlan:
    """The same values in another shape (no arithmetic: the source type is kept)."""
    if int(np.prod(shape)) != int(np.prod(ref.shape)):
        raise ConversionError(f"{ref.name}: cannot reshape {ref.shape} to {shape}")
    return TensorPlan(name, shape, ref.dtype, lambda: ref.load().reshape(shape), keep_f32)


def neg_exp(data: np.ndarray) -> np.ndarray:
    return -np.exp(data)


def mamba2_mixer_tensor(
    conv: ArchConverter, hf_name: str, ref: TensorRef, *, n_group: int
) -> TensorPlan | None:
    """The GGUF tensor of a Mamba-2 mixer weight, or None for tensors mapped 1:1."""
    if hf_name.endswith(".dt_bias"):
        name = conv.gguf_name(hf_name.removesuffix(".dt_bias") + ".dt_proj.bias")
        return reshaped(name, ref, ref.shape, keep_f32=True)
    if hf_name.endswith(".A_log"):
        return computed(conv.gguf_name(hf_name), ref, (*ref.shape, 1), neg_exp)
    if hf_name.endswith(".D"):
        return reshaped(conv.gguf_name(hf_name), ref, (*ref.shape, 1), keep_f32=True)
    if hf_name.endswith("conv1d.weight"):
        return reshaped(conv.gguf_name(hf_name), ref, (ref.shape[0], ref.shape[-1]), keep_f32=True)
    name = conv.gguf_name(hf_name)
    if name.endswith(".ssm_norm.weight"):
        d_inner = ref.shape[0]
        if d_inner % n_group:
            raise ConversionError(f"{hf_name}: {d_inner} channels do not make {n_group} groups")
        return reshaped(name, ref, (n_group, d_inner // n_group), keep_f32=True)
    if name.endswith(".ssm_conv1d.bias"):
        return reshaped(name, ref, ref.shape, keep_f32=True)
    return None


class _StateSpaceConverter(ArchConverter):
    """Attention-free models: hyperparameters without heads, no RoPE."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.cfg = dict(ckpt.config)
        self.n_layers = int(self.require("num_hidden_layers"))
        self.n_embd = int(self.require("hidden_size"))
        self.n_head = self.n_head_kv = self.head_dim = 0
        self.tensor_map = gguf.get_tensor_name_map(self.gguf_arch, self.n_layers)
        self.arch_name = gguf.MODEL_ARCH_NAMES[self.gguf_arch]
        if self.cfg.get("use_bias"):
            raise ConversionError("Mamba in/out projection biases are not supported by llama.cpp")
        if self.cfg.get("use_conv_bias") is False:
            raise ConversionError("llama.cpp's Mamba needs the conv1d bias (use_conv_bias=True)")

    def add_state_metadata(self, w: gguf.GGUFWriter, d_inner: int) -> None:
        cfg = self.cfg
        w.add_context_length(STATE_CONTEXT)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_block_count(self.n_layers)
        w.add_ssm_conv_kernel(int(cfg.get("conv_kernel") or 4))
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(int(self.require("state_size")))
        w.add_layer_norm_rms_eps(float(cfg.get("layer_norm_epsilon") or 1e-5))
        if cfg.get("vocab_size"):
            w.add_vocab_size(int(cfg["vocab_size"]))


class MambaConverter(_StateSpaceConverter):
    hf_architectures = ("MambaForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.MAMBA

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        d_inner = int(self.cfg.get("intermediate_size") or 2 * self.n_embd)
        self.add_state_metadata(w, d_inner)
        rank = self.cfg.get("time_step_rank")
        if not isinstance(rank, int):  # "auto" in configs that were never resolved
            rank = -(self.n_embd // -16)
        w.add_ssm_time_step_rank(rank)
        w.add_ssm_dt_b_c_rms(False)  # only Falcon-Mamba norms dt, B and C

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        name = self.gguf_name(hf_name)
        if hf_name.endswith(".A_log"):
            yield computed(name, ref, ref.shape, neg_exp)
        elif hf_name.endswith("conv1d.weight"):
            yield reshaped(name, ref, (ref.shape[0], ref.shape[-1]), keep_f32=True)
        elif name.endswith((".ssm_d", ".ssm_conv1d.bias")):
            yield reshaped(name, ref, ref.shape, keep_f32=True)
        else:
            yield self.passthrough(hf_name, ref)


class Mamba2Converter(_StateSpaceConverter):
    hf_architectures = ("Mamba2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.MAMBA2

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        self.d_inner = int(self.cfg.get("expand") or 2) * self.n_embd
        self.n_group = int(self.cfg.get("n_groups") or 1)
        self.ssm_head_dim = int(self.cfg.get("head_dim") or 64)
        if self.d_inner % self.ssm_head_dim:
            raise ConversionError(
                f"Mamba-2 inner size {self.d_inner} is not a multiple of head_dim "
                f"{self.ssm_head_dim}"
            )
        heads = self.cfg.get("num_heads")
        if heads is not None and int(heads) * self.ssm_head_dim != self.d_inner:
            raise ConversionError("Mamba-2 needs num_heads * head_dim == expand * hidden_size")

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        self.add_state_metadata(w, self.d_inner)
        w.add_ssm_time_step_rank(self.d_inner // self.ssm_head_dim)  # the number of heads
        w.add_ssm_group_count(self.n_group)

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        plan = mamba2_mixer_tensor(self, hf_name, ref, n_group=self.n_group)
        yield plan if plan is not None else self.passthrough(hf_name, ref)
