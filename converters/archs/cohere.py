"""Command-R (``CohereForCausalLM`` -> ``command-r``).

One LayerNorm (weight, no bias) feeds attention and MLP in parallel; logits are multiplied by
``logit_scale``; the head is always the token embedding. Cohere's RoPE rotates interleaved
pairs, llama.cpp's NORM RoPE as stored: no q/k permutation. llama.cpp loads per-head q/k norms
only for 64+ layer models, so a smaller ``use_qk_norm`` checkpoint is refused rather than
converted into a file that silently drops them.
"""

from __future__ import annotations

import gguf

from converters.archs.base import ArchConverter
from ggufworker.errors import ConversionError

#: llama.cpp's command-r loader reads attn_q_norm/attn_k_norm only from this many layers on.
QK_NORM_MIN_LAYERS = 64


class CohereConverter(ArchConverter):
    hf_architectures = ("CohereForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.COMMAND_R
    always_tied = True

    def __init__(self, ckpt) -> None:
        super().__init__(ckpt)
        if self.cfg.get("tie_word_embeddings") is False:
            raise ConversionError("command-r reads its head from the token embedding; "
                                  "untied checkpoints (tie_word_embeddings: false) cannot be "
                                  "converted")  # fmt: skip
        if self.cfg.get("use_qk_norm") and self.n_layers < QK_NORM_MIN_LAYERS:
            raise ConversionError(
                f"use_qk_norm with {self.n_layers} layers: llama.cpp's command-r graph applies "
                f"q/k norms only to models of {QK_NORM_MIN_LAYERS}+ layers"
            )

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        w.add_layer_norm_eps(float(self.cfg.get("layer_norm_eps", 1e-5)))
        w.add_logit_scale(float(self.require("logit_scale")))
