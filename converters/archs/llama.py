"""Llama family: LlamaForCausalLM (incl. Llama 3 RoPE scaling) and MistralForCausalLM.

llama.cpp applies RoPE to adjacent pairs of each head while Hugging Face checkpoints rotate
the two halves of each head, so the rows of q_proj/k_proj are permuted (per head: interleave
the first and second halves) to make both compute the same attention.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from functools import partial
from typing import ClassVar

import gguf
import numpy as np

from converters.archs.base import ArchConverter, TensorPlan, f32_plan
from converters.checkpoint import TensorRef

logger = logging.getLogger(__name__)


def rope_pair_permute(data: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder rows of a q/k projection from half-split to interleaved pairs, per head."""
    shape = data.shape
    rows = shape[0] // n_head // 2
    return np.ascontiguousarray(
        data.reshape(n_head, 2, rows, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Per-frequency divisors llama.cpp applies for Llama 3's ``rope_type: llama3`` scaling.

    Computed in float32, as transformers computes its scaled frequencies.
    """
    f32 = np.float32
    base = f32(rope.get("rope_theta", 10000.0))
    factor = f32(rope.get("factor", 8.0))
    low = f32(rope.get("low_freq_factor", 1.0))
    high = f32(rope.get("high_freq_factor", 4.0))
    old_ctx = f32(rope.get("original_max_position_embeddings", 8192))
    freqs = f32(1.0) / base ** (np.arange(0, head_dim, 2, dtype=f32) / f32(head_dim))
    wavelen = f32(2 * math.pi) / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = f32(1.0) / ((f32(1.0) - smooth) / factor + smooth)
    out = np.where(
        wavelen < old_ctx / high, f32(1.0), np.where(wavelen > old_ctx / low, factor, mid)
    )
    return out.astype(f32)


class LlamaConverter(ArchConverter):
    hf_architectures: ClassVar[tuple[str, ...]] = ("LlamaForCausalLM", "MistralForCausalLM")
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        for proj, n_head in (("q_proj", self.n_head), ("k_proj", self.n_head_kv)):
            if hf_name.endswith((f"{proj}.weight", f"{proj}.bias")):
                yield self.passthrough(hf_name, ref, partial(rope_pair_permute, n_head=n_head))
                return
        yield self.passthrough(hf_name, ref)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        window = self.cfg.get("sliding_window")
        if window and int(window) < int(self.cfg.get("max_position_embeddings") or 0):
            # llama.cpp's llama graph has no sliding window: identical up to `window` tokens.
            logger.warning(
                "sliding_window=%s is not applied by llama.cpp's llama architecture; "
                "outputs match only for contexts up to %s tokens", window, window,
            )  # fmt: skip

    def extra_tensors(self) -> Iterable[TensorPlan]:
        if str(self.rope.get("rope_type", "")).lower() == "llama3":
            name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
            yield f32_plan(name, llama3_rope_factors(self.rope, self.head_dim))
