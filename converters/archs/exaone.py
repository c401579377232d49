"""EXAONE 4 (``Exaone4ForCausalLM`` -> ``exaone4``).

Norms after attention and MLP, per-head q/k RMS norms, NEOX RoPE (no permutation). Hugging Face
runs sliding-window attention with RoPE on its ``sliding_attention`` layers and *no* RoPE on
full-attention layers whenever ``sliding_window`` is set. llama.cpp's exaone4 graph does that
only for 64-layer models (EXAONE 4.0 32B); any other depth runs every layer with RoPE and full
attention. A checkpoint whose layer pattern llama.cpp would ignore is refused instead of being
converted into a file that computes something else.
"""

from __future__ import annotations

import gguf

from converters.archs.base import ArchConverter
from ggufworker.errors import ConversionError

#: the only depth at which llama.cpp's exaone4 loader enables sliding window + NoPE layers
SWA_LAYERS = 64


class Exaone4Converter(ArchConverter):
    hf_architectures = ("Exaone4ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.EXAONE4

    def __init__(self, ckpt) -> None:
        super().__init__(ckpt)
        window = self.cfg.get("sliding_window")
        types = list(self.cfg.get("layer_types") or [])
        self.swa_pattern = [t == "sliding_attention" for t in types] if window else []
        if window and not types:
            raise ConversionError("config.json sets sliding_window but lacks 'layer_types'")
        if any(self.swa_pattern) or (window and types):
            if self.n_layers != SWA_LAYERS:
                raise ConversionError(
                    f"sliding_window={window} with {self.n_layers} layers: llama.cpp's exaone4 "
                    f"graph applies sliding windows and NoPE layers only to {SWA_LAYERS}-layer "
                    "models, so this checkpoint would compute differently"
                )

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        if self.swa_pattern:
            w.add_sliding_window(int(self.cfg["sliding_window"]))
            w.add_sliding_window_pattern(self.swa_pattern)
