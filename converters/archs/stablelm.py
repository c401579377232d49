"""StableLmForCausalLM (StableLM 2, StableLM-3B-4E1T) -> llama.cpp ``stablelm``.

LayerNorm blocks with a SiLU-gated MLP, NEOX RoPE on the first ``partial_rotary_factor`` of each
head, optional q/k/v biases. StableLM 2 12B adds a parallel residual (no post-attention norm,
which is how llama.cpp recognises it) and per-head q/k LayerNorms, stored as one LayerNorm per
head; they are stacked into one ``{head_dim, n_head}`` tensor per layer. llama.cpp requires
the output head, so a tied checkpoint gets a copy of the embedding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import partial

import gguf
import numpy as np

from converters.archs.base import ArchConverter, TensorPlan
from converters.checkpoint import Checkpoint, TensorRef
from ggufworker.errors import ConversionError

_PER_HEAD_NORM = re.compile(r"^(.*\.(q|k)_layernorm)\.norms\.(\d+)\.weight$")


class StableLmConverter(ArchConverter):
    hf_architectures = ("StableLmForCausalLM", "StableLMEpochForCausalLM")
    gguf_arch = gguf.MODEL_ARCH.STABLELM
    output_required = True
    layer_norm_eps_keys = ("layer_norm_eps", "norm_eps")
    # StableLM-3B-4E1T's remote-code config
    config_aliases = {"partial_rotary_factor": "rope_pct"}

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        self.check_activation("hidden_act", "silu", ("silu",))

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        w.add_parallel_residual(bool(self.cfg.get("use_parallel_residual", False)))

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        match = _PER_HEAD_NORM.match(hf_name)
        if match is None:
            yield self.passthrough(hf_name, ref)
        elif match.group(3) == "0":  # one stacked tensor per layer, planned at head 0
            yield self._stacked_norm(
                match.group(1), self.n_head if match.group(2) == "q" else self.n_head_kv
            )

    def _stacked_norm(self, prefix: str, heads: int) -> TensorPlan:
        names = [f"{prefix}.norms.{h}.weight" for h in range(heads)]
        missing = [n for n in names if n not in self.ckpt.tensors]
        if missing:
            raise ConversionError(f"per-head norm tensors missing: {missing[:3]}")
        refs = [self.ckpt.tensors[n] for n in names]
        if len({(r.shape, r.dtype) for r in refs}) != 1:
            raise ConversionError(f"per-head norms of {prefix} differ in shape or type")
        name = self.gguf_name(f"{prefix}.weight")
        shape = (heads, *refs[0].shape)
        return TensorPlan(name, shape, refs[0].dtype, partial(_stack, refs), True)


def _stack(refs: list[TensorRef]) -> np.ndarray:
    return np.stack([r.load() for r in refs])
