"""OLMoE (``OlmoeForCausalLM`` -> ``olmoe``).

NEOX RoPE, softmax routing without renormalisation (hard-coded in llama.cpp, as in the released
checkpoints), q/k RMS norms over the whole projection. llama.cpp declares those norms
``{n_embd}`` wide and has no q/k/v clipping, so configs with fewer key/value heads than query
heads, or with ``clip_qkv``, are refused.
"""

from __future__ import annotations

import gguf

from converters.archs.moe import MoEConverter
from converters.checkpoint import Checkpoint
from ggufworker.errors import ConversionError


class OlmoeConverter(MoEConverter):
    hf_architectures = ("OlmoeForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.OLMOE
    output_required = True

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        self.refuse_unless(
            "norm_topk_prob", False, False, "llama.cpp's olmoe graph never renormalises"
        )
        self.refuse_unless("clip_qkv", None, None, "llama.cpp's olmoe graph does not clip q/k/v")
        if self.n_head_kv != self.n_head:
            raise ConversionError(
                "OLMoE with grouped-query attention is not supported: llama.cpp sizes the q/k "
                "norms for as many key/value heads as query heads"
            )
