"""Qwen2ForCausalLM and Qwen3ForCausalLM.

Both use NEOX-style RoPE in llama.cpp (the halves rotation Hugging Face uses), so tensors map
1:1; Qwen2 carries q/k/v biases and Qwen3 per-head q/k RMS norms, both named by gguf-py's maps.
"""

from __future__ import annotations

import gguf

from converters.archs.base import ArchConverter


class Qwen2Converter(ArchConverter):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2


class Qwen3Converter(ArchConverter):
    hf_architectures = ("Qwen3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3
