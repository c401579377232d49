"""PhiForCausalLM (phi-1, phi-1.5, phi-2) -> llama.cpp ``phi2``.

One LayerNorm per block feeds attention and the MLP in parallel; separate q/k/v projections
with biases; NEOX RoPE on the first ``partial_rotary_factor`` of each head; an LM head with a
bias that llama.cpp always reads. Unlike llama.cpp's own converter, the feed-forward width
and the KV head count come from the config (it writes ``4 * hidden`` and ``n_head``).
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf
import numpy as np

from converters.archs.base import GELU_ACTIVATIONS, ArchConverter, TensorPlan, f32_plan
from converters.checkpoint import Checkpoint
from ggufworker.errors import ConversionError


class PhiConverter(ArchConverter):
    hf_architectures = ("PhiForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.PHI2
    output_required = True
    layer_norm_eps_keys = ("layer_norm_eps", "layer_norm_epsilon")
    config_aliases = {"max_position_embeddings": "n_positions"}

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        if self.cfg.get("qk_layernorm"):
            raise ConversionError(
                "config.json qk_layernorm=true is not supported: llama.cpp's phi2 graph has "
                "no query/key LayerNorm"
            )
        self.check_activation("hidden_act", "gelu_new", GELU_ACTIVATIONS)

    def extra_tensors(self) -> Iterable[TensorPlan]:
        # llama.cpp requires the head's bias; a checkpoint without one gets zeros.
        if "lm_head.bias" not in self.ckpt.tensors:
            yield f32_plan("output.bias", np.zeros(int(self.require("vocab_size")), np.float32))
