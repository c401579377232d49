"""Starcoder2ForCausalLM -> llama.cpp ``starcoder2``.

LayerNorm (with biases) before attention and MLP, separate q/k/v projections with biases, GQA,
NEOX RoPE over the whole head, a plain GELU MLP (``c_fc``/``c_proj``). Tensors map 1:1.
"""

from __future__ import annotations

import logging

import gguf

from converters.archs.base import GELU_ACTIVATIONS, ArchConverter
from converters.checkpoint import Checkpoint
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)


class Starcoder2Converter(ArchConverter):
    hf_architectures = ("Starcoder2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.STARCODER2
    layer_norm_eps_keys = ("norm_epsilon", "layer_norm_epsilon")

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        if self.cfg.get("use_bias") is False:
            raise ConversionError(
                "config.json use_bias=false is not supported: llama.cpp's starcoder2 graph "
                "requires the output and MLP biases"
            )
        self.check_activation("hidden_act", "gelu_pytorch_tanh", GELU_ACTIVATIONS)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        window = self.cfg.get("sliding_window")
        if window and int(window) < int(self.cfg.get("max_position_embeddings") or 0):
            logger.warning(
                "sliding_window=%s is not applied by llama.cpp's starcoder2 graph; outputs "
                "match only for contexts up to %s tokens", window, window,
            )  # fmt: skip
