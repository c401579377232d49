"""Gemma family: GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM.

Gemma's RMSNorm multiplies by ``1 + weight``; llama.cpp multiplies by the stored weight, so every
norm weight is stored shifted by one. The LM head is always the tied embedding. Gemma 2 adds
logit soft-capping and alternating sliding-window layers; Gemma 3 per-head q/k norms, a
separate RoPE base for sliding layers and a per-layer sliding pattern.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import gguf

from converters.archs.base import ArchConverter, TensorPlan, rope_parameters
from converters.checkpoint import TensorRef
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)


class GemmaConverter(ArchConverter):
    hf_architectures = ("GemmaForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA
    # llama.cpp's Gemma graphs always use token_embd as the output projection.
    always_tied = True

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        if hf_name.endswith("norm.weight"):
            yield self.shifted(hf_name, ref, 1.0)
        else:
            yield self.passthrough(hf_name, ref)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        if not self.cfg.get("head_dim"):  # else the base class wrote them
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        self._check_attention_scale()

    def _check_attention_scale(self) -> None:
        # llama.cpp scales queries by 1/sqrt(head_dim) for these models; transformers uses
        # query_pre_attn_scalar. They agree for every released checkpoint except Gemma-2/3 27B,
        # which llama.cpp recognises by its layer count.
        scalar = self.cfg.get("query_pre_attn_scalar")
        if scalar is not None and int(scalar) != self.head_dim:
            logger.warning(
                "query_pre_attn_scalar=%s differs from head_dim=%d: llama.cpp uses head_dim "
                "unless this is the 27B layout, so outputs may differ", scalar, self.head_dim,
            )  # fmt: skip


class Gemma2Converter(GemmaConverter):
    hf_architectures = ("Gemma2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA2

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        cfg = self.cfg
        if cfg.get("attn_logit_softcapping"):
            w.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
        if cfg.get("sliding_window"):
            w.add_sliding_window(int(cfg["sliding_window"]))
        _add_layer_pattern(w, cfg, self.n_layers)


class Gemma3Converter(GemmaConverter):
    hf_architectures = ("Gemma3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA3

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        cfg = self.cfg
        if cfg.get("attn_logit_softcapping"):
            raise ConversionError("Gemma 3 with attn_logit_softcapping is not supported")
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
        local = rope_parameters(cfg, "sliding_attention")
        theta_local = cfg.get("rope_local_base_freq") or local.get("rope_theta")
        if theta_local is not None:
            w.add_rope_freq_base_swa(float(theta_local))
        if cfg.get("sliding_window"):
            w.add_sliding_window(int(cfg["sliding_window"]))
            _add_layer_pattern(w, cfg, self.n_layers)


def _add_layer_pattern(w: gguf.GGUFWriter, cfg: dict[str, Any], n_layers: int) -> None:
    """Write which layers use sliding-window attention, from config ``layer_types``."""
    layer_types = cfg.get("layer_types")
    if layer_types and len(layer_types) == n_layers:
        w.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])


class Gemma3MultimodalConverter(Gemma3Converter):
    """Gemma3ForConditionalGeneration (Gemma 3 4B and larger): the language model only.

    The vision tower and projector are skipped (llama.cpp loads them from a separate mmproj
    file); text-only outputs are the same as the checkpoint's.
    """

    hf_architectures = ("Gemma3ForConditionalGeneration",)
    # Both layouts transformers has used for the text weights.
    prefixes = {"language_model.model.": "model.", "model.language_model.": "model."}

    def _text_name(self, hf_name: str) -> str | None:
        for old, new in self.prefixes.items():
            if hf_name.startswith(old):
                return new + hf_name[len(old) :]
        return None

    def skip(self, hf_name: str) -> bool:
        return self._text_name(hf_name) is None or super().skip(hf_name)

    def gguf_name(self, hf_name: str) -> str:
        return super().gguf_name(self._text_name(hf_name) or hf_name)
