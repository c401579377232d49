"""ERNIE 4.5 dense (``Ernie4_5ForCausalLM`` -> ``ernie4_5``).

ERNIE rotates interleaved pairs, which is llama.cpp's NORM RoPE as stored: tensors map 1:1 with
no q/k permutation. Embeddings are tied by default (llama.cpp reuses ``token_embd``).
"""

from __future__ import annotations

import gguf

from converters.archs.base import ArchConverter


class Ernie45Converter(ArchConverter):
    hf_architectures = ("Ernie4_5ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.ERNIE4_5
