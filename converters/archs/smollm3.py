"""SmolLM3 (``SmolLM3ForCausalLM`` -> ``smollm3``): Llama with NoPE layers.

Hugging Face lists which layers skip RoPE in ``no_rope_layers`` (1 = RoPE, 0 = none). llama.cpp's
smollm3 graph has no such list: it skips RoPE on every 4th layer (layer i when (i+1) % 4 == 0),
the pattern of the released models. A checkpoint with another pattern is refused.
"""

from __future__ import annotations

import gguf

from converters.archs.llama import LlamaConverter
from ggufworker.errors import ConversionError

#: llama.cpp hard-codes n_no_rope_layer_step = 4 for smollm3
NO_ROPE_STEP = 4


class SmolLM3Converter(LlamaConverter):
    hf_architectures = ("SmolLM3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.SMOLLM3

    def __init__(self, ckpt) -> None:
        super().__init__(ckpt)
        uses_rope = self.cfg.get("no_rope_layers")
        if uses_rope is None:
            interval = int(self.cfg.get("no_rope_layer_interval") or NO_ROPE_STEP)
            uses_rope = [int((i + 1) % interval != 0) for i in range(self.n_layers)]
        expected = [int((i + 1) % NO_ROPE_STEP != 0) for i in range(self.n_layers)]
        if [int(bool(x)) for x in uses_rope] != expected:
            raise ConversionError(
                f"no_rope_layers={list(uses_rope)}: llama.cpp's smollm3 graph skips RoPE on "
                f"every {NO_ROPE_STEP}th layer only ({expected})"
            )
