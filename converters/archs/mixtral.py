"""Mixtral (``MixtralForCausalLM``): llama.cpp's ``llama`` architecture with experts.

Attention is Llama's (q/k rows permuted to llama.cpp's pair order). Routing is a softmax over
all experts, the top ``num_experts_per_tok`` kept and renormalised, which is what llama.cpp's
llama graph computes for any expert count; there is no routing key to write beyond the counts.
"""

from __future__ import annotations

from typing import ClassVar

import gguf

from converters.archs.llama import LlamaConverter
from converters.archs.moe import MoEConverter


class MixtralConverter(MoEConverter, LlamaConverter):
    hf_architectures: ClassVar[tuple[str, ...]] = ("MixtralForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.LLAMA
