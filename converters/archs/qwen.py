"""Qwen2ForCausalLM and Qwen3ForCausalLM.

Both use NEOX-style RoPE in llama.cpp (the halves rotation Hugging Face uses), so tensors map
1:1; Qwen2 carries q/k/v biases and Qwen3 per-head q/k RMS norms, both named by gguf-py's maps.
"""

from __future__ import annotations

import gguf

from converters.archs.base import ArchConverter
from converters.checkpoint import Checkpoint


class Qwen2Converter(ArchConverter):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2


class Qwen3Converter(ArchConverter):
    hf_architectures = ("Qwen3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3

    @classmethod
    def for_checkpoint(cls, ckpt: Checkpoint) -> type[ArchConverter]:
        """Qwen3-Embedding and Qwen3-Reranker ship as Qwen3ForCausalLM too: a
        sentence-transformers folder or a reranker's name selects their converter."""
        from converters.archs import qwen_retrieval

        if cls is not Qwen3Converter:
            return cls
        if qwen_retrieval.is_qwen3_reranker(ckpt):
            return qwen_retrieval.Qwen3RerankerConverter
        if (ckpt.dir / "modules.json").is_file():
            return qwen_retrieval.Qwen3EmbeddingConverter
        return cls
