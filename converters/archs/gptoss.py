"""GPT-OSS (``GptOssForCausalLM`` -> ``gpt-oss``).

Experts are stored fused and transposed: ``experts.gate_up_proj`` ``(E, H, 2F)`` interleaves
gate and up columns (gate at even, up at odd positions), ``experts.down_proj`` is ``(E, F, H)``;
both carry biases. They are de-interleaved and transposed into llama.cpp's ``(E, F, H)`` /
``(E, H, F)`` expert tensors. Attention has per-head sinks (``self_attn.sinks``) and alternates
sliding-window and full layers as ``layer_types`` says. Routing: top-k of the biased router
logits, then a softmax over those k (llama.cpp's SOFTMAX_WEIGHT). llama.cpp's clamped SwiGLU
has alpha 1.702 and limit 7 built in, so configs with other values are refused.

Checkpoints in OpenAI's MXFP4 form (``quant_method: mxfp4``, as gpt-oss is published) keep
their experts in MXFP4: ``*_blocks`` ``(E, rows, G, 16)`` (two e2m1 values per byte, the even
element in the low nibble) and ``*_scales`` ``(E, rows, G)`` (e8m0) are repacked into ggml's
MXFP4 blocks (scale byte, then element j in the low and j+16 in the high nibble), gate and up
rows de-interleaved, whatever the outtype; the other tensors follow the outtype.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial

import gguf
import numpy as np

from converters.archs.base import TensorPlan, derived_plan
from converters.archs.moe import MT, MoEConverter, Ref, block_name
from converters.checkpoint import Checkpoint, TensorRef
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)


class GptOssConverter(MoEConverter):
    hf_architectures = ("GptOssForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GPT_OSS
    output_required = True
    prequantized_methods = ("mxfp4",)

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        why = "llama.cpp's gpt-oss SwiGLU has alpha 1.702 and limit 7.0 built in"
        self.refuse_unless("swiglu_alpha", 1.702, 1.702, why)
        self.refuse_unless("swiglu_limit", 7.0, 7.0, why)
        for name in ckpt.tensors:
            if name.endswith("_blocks") and name[: -len("_blocks")] + "_scales" not in ckpt.tensors:
                raise ConversionError(f"{name} has no matching _scales tensor")

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        if str(self.rope.get("rope_type")) == "yarn" and self.rope.get("truncate") is False:
            logger.warning(
                "YaRN with truncate=false: llama.cpp rounds the YaRN correction range to whole "
                "dimensions, so RoPE frequencies differ slightly from transformers'"
            )
        if self.cfg.get("sliding_window"):
            w.add_sliding_window(int(self.cfg["sliding_window"]))
        layer_types = self.cfg.get("layer_types")
        if layer_types and len(layer_types) == self.n_layers:
            w.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])

    def add_routing_metadata(self, w: gguf.GGUFWriter) -> None:
        w.add_expert_feed_forward_length(int(self.require("intermediate_size")))

    def skip(self, hf_name: str) -> bool:
        # MXFP4 scales are read together with their blocks
        return hf_name.endswith("_scales") or super().skip(hf_name)

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if hf_name.endswith("_blocks"):
            yield from self.mxfp4_experts(hf_name, ref)
        elif hf_name.endswith("self_attn.sinks"):
            yield TensorPlan(self.gguf_name(hf_name) + ".weight", ref.shape, ref.dtype,
                             ref.load, True)  # fmt: skip
        else:
            yield from super().tensor(hf_name, ref)

    def expert_tensor(self, bid: int, proj: str, kind: str, ref: Ref) -> Iterable[TensorPlan]:
        gate, up, down = (block_name(t, bid) for t in (MT.FFN_GATE_EXP, MT.FFN_UP_EXP,
                                                         MT.FFN_DOWN_EXP))  # fmt: skip
        if proj == "gate_up_proj":  # (E, H, 2F) -> 2 x (E, F, H)
            n_expert, hidden, both = ref.shape
            shape = (n_expert, both // 2, hidden)
            yield derived_plan(gate, shape, ref, lambda a: a[..., 0::2].transpose(0, 2, 1))
            yield derived_plan(up, shape, ref, lambda a: a[..., 1::2].transpose(0, 2, 1))
        elif proj == "gate_up_proj_bias":  # (E, 2F) -> 2 x (E, F)
            n_expert, both = ref.shape
            halves = (n_expert, both // 2)
            yield derived_plan(_bias(gate), halves, ref, lambda a: a[:, 0::2], keep_f32=True)
            yield derived_plan(_bias(up), halves, ref, lambda a: a[:, 1::2], keep_f32=True)
        elif proj == "down_proj":  # (E, F, H) -> (E, H, F)
            n_expert, ff, hidden = ref.shape
            yield derived_plan(down, (n_expert, hidden, ff), ref, lambda a: a.transpose(0, 2, 1))
        elif proj == "down_proj_bias":
            yield TensorPlan(_bias(down), ref.shape, ref.dtype, ref.load, True)
        else:
            raise ConversionError(f"block {bid}: unknown GPT-OSS expert tensor {proj!r}")

    def mxfp4_experts(self, hf_name: str, blocks: TensorRef) -> Iterable[TensorPlan]:
        """``experts.{gate_up,down}_proj_blocks`` (+ ``_scales``) -> MXFP4 expert tensors."""
        scales = self.ckpt.tensors[hf_name[: -len("_blocks")] + "_scales"]
        bid = int(hf_name.split("layers.")[1].split(".")[0])
        n_expert, rows, groups, half_block = blocks.shape
        if n_expert != self.n_expert or half_block != 16 or scales.shape != blocks.shape[:3]:
            raise ConversionError(f"{hf_name}: unexpected MXFP4 layout {list(blocks.shape)}")
        parts: tuple[tuple[gguf.MODEL_TENSOR, slice], ...]
        if hf_name.endswith("gate_up_proj_blocks"):  # rows interleave gate and up
            parts = ((MT.FFN_GATE_EXP, slice(0, None, 2)), (MT.FFN_UP_EXP, slice(1, None, 2)))
        elif hf_name.endswith("down_proj_blocks"):
            parts = ((MT.FFN_DOWN_EXP, slice(None)),)
        else:
            raise ConversionError(f"{hf_name}: unknown MXFP4 tensor")
        for kind, sel in parts:
            n_rows = len(range(rows)[sel])
            shape = (n_expert, n_rows, groups * 32)
            load = partial(_repack, blocks, scales, sel)
            yield TensorPlan(block_name(kind, bid), shape, "MXFP4", load)


def _repack(blocks: TensorRef, scales: TensorRef, rows: slice) -> np.ndarray:
    return ggml_mxfp4(blocks.load()[:, rows], scales.load()[:, rows])


def ggml_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """OpenAI/transformers MXFP4 ``(..., G, 16)`` bytes + ``(..., G)`` scales -> ggml's MXFP4
    blocks ``(..., G * 17)``: scale byte, then element j (low nibble) with j + 16 (high)."""
    nibbles = np.empty((*blocks.shape[:-1], 32), dtype=np.uint8)
    nibbles[..., 0::2] = blocks & 0x0F
    nibbles[..., 1::2] = blocks >> 4
    qs = nibbles[..., :16] | (nibbles[..., 16:] << 4)
    packed = np.concatenate([np.asarray(scales, dtype=np.uint8)[..., None], qs], axis=-1)
    return packed.reshape(*blocks.shape[:-2], blocks.shape[-2] * 17)


def _bias(weight_name: str) -> str:
    return weight_name.removesuffix(".weight") + ".bias"
