"""Llama family: LlamaForCausalLM (incl. Llama 3 RoPE scaling) and MistralForCausalLM.

llama.cpp applies RoPE to adjacent pairs of each head while Hugging Face checkpoints rotate
the two halves of each head, so the rows of q_proj/k_proj are permuted (per head: interleave
the first and second halves) to make both compute the same attention.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import gguf
import numpy as np

from converters.archs.base import ArchConverter, TensorPlan, f32_plan, rope_parameters
from converters.checkpoint import TensorRef


def rope_pair_permute(data: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder rows of a q/k projection from half-split to interleaved pairs, per head."""
    shape = data.shape
    rows = shape[0] // n_head // 2
    return np.ascontiguousarray(
        data.reshape(n_head, 2, rows, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def llama3_rope_factors(rope: dict, head_dim: int) -> list[float]:
    """Per-frequency divisors llama.cpp applies for Llama 3's ``rope_type: llama3`` scaling."""
    base = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / base ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return factors


class LlamaConverter(ArchConverter):
    hf_architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    permute_qk = True

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if self.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            yield self.passthrough(hf_name, ref, lambda d: rope_pair_permute(d, self.n_head))
        elif self.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            yield self.passthrough(hf_name, ref, lambda d: rope_pair_permute(d, self.n_head_kv))
        else:
            yield self.passthrough(hf_name, ref)

    def extra_tensors(self) -> Iterable[TensorPlan]:
        rope = rope_parameters(self.cfg)
        if str(rope.get("rope_type", "")).lower() == "llama3":
            name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
            yield f32_plan(name, llama3_rope_factors(rope, self.head_dim))
