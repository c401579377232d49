"""GLM-4 (``GlmForCausalLM``, glm-4-9b-hf -> ``chatglm``) and GLM-4-0414 (``Glm4ForCausalLM`` ->
``glm4``).

Both rotate interleaved pairs over the first ``partial_rotary_factor`` of each head, which is
llama.cpp's NORM RoPE as stored: no q/k permutation. The fused ``mlp.gate_up_proj`` (gate rows
first) is kept fused as ``ffn_up``, which llama.cpp splits into gate and up the same way.
GLM-4-0414 adds norms after attention and after the MLP.

llama.cpp's own converter reads the norm epsilon from ``layernorm_epsilon`` (absent in these
configs, so 1e-5 although the models use ``rms_norm_eps``, 1.5625e-07 by default) and the
context length from ``seq_length`` or else ``hidden_size``; here both come from the keys the
Hugging Face model reads.
"""

from __future__ import annotations

import gguf

from converters.archs.base import ArchConverter
from ggufworker.errors import ConversionError


class GlmConverter(ArchConverter):
    hf_architectures = ("GlmForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.CHATGLM

    def __init__(self, ckpt) -> None:
        super().__init__(ckpt)
        if self.n_head * self.head_dim != self.n_embd:
            # llama.cpp's chatglm graph sizes the attention output {n_embd, n_embd}
            raise ConversionError(
                f"chatglm needs num_attention_heads * head_dim == hidden_size "
                f"({self.n_head} * {self.head_dim} != {self.n_embd})"
            )


class Glm4Converter(ArchConverter):
    hf_architectures = ("Glm4ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GLM4
