"""Helium (``HeliumForCausalLM``): Llama-shaped with interleaved RoPE, stored as ``llama``.

llama.cpp has no helium architecture; its llama graph computes Helium exactly when q/k stay in
Helium's interleaved order (the halves-to-pairs permutation Llama checkpoints need would break it).
"""

from __future__ import annotations

import gguf

from converters.archs.base import ArchConverter


class HeliumConverter(ArchConverter):
    hf_architectures = ("HeliumForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.LLAMA
