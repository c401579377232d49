"""EmbeddingGemma (Gemma3TextModel, bidirectional) -> llama.cpp ``gemma-embedding``.

The transformer is Gemma 3's (norms stored as ``1 + w``, q/k norms, local RoPE base, per-layer
sliding pattern) with attention in both directions; llama.cpp's gemma-embedding graph is always
non-causal and its sliding window symmetric. The sentence-transformers folder adds mean
pooling, two bias-free ``Dense`` projections (``2_Dense``: hidden -> wider, ``3_Dense``: back to
hidden) and ``Normalize``: the projections become ``dense_2.weight`` / ``dense_3.weight`` with
their sizes in ``{arch}.dense_2_feat_{in,out}`` / ``dense_3_feat_{in,out}``, which llama.cpp
applies after pooling.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf

from converters.archs.base import TensorPlan
from converters.archs.encoder import DenseModule, EncoderConverter
from converters.archs.gemma import Gemma3Converter
from converters.checkpoint import Checkpoint
from ggufworker.errors import ConversionError

#: GGUF tensor names of the two projections, in the order llama.cpp applies them
_DENSE_NAMES = ("dense_2", "dense_3")


class GemmaEmbeddingConverter(EncoderConverter, Gemma3Converter):
    hf_architectures = ("Gemma3TextModel",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA_EMBEDDING
    default_pooling = gguf.PoolingType.MEAN

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        if self.cfg.get("use_bidirectional_attention") is False:
            raise ConversionError(
                "Gemma3TextModel with causal attention is not an embedding model llama.cpp "
                "runs (gemma-embedding is bidirectional); convert Gemma3ForCausalLM instead"
            )
        dense = self.st.dense
        if dense and (
            len(dense) != 2
            or dense[0].in_features != self.n_embd
            or dense[1].out_features != self.n_embd
            or dense[0].out_features != dense[1].in_features
        ):
            shapes = [(d.in_features, d.out_features) for d in dense]
            raise ConversionError(
                f"Dense modules {shapes}: llama.cpp's gemma-embedding takes two projections, "
                f"hidden ({self.n_embd}) -> wider -> hidden"
            )

    def gguf_name(self, hf_name: str) -> str:
        # Gemma3TextModel saves its tensors without the causal LM's ``model.`` prefix
        if not hf_name.startswith("model."):
            hf_name = "model." + hf_name
        return super().gguf_name(hf_name)

    def extra_tensors(self) -> Iterable[TensorPlan]:
        for tensor, module in zip(_DENSE_NAMES, self.st.dense, strict=False):
            yield _dense_plan(tensor, module)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        for tensor, module in zip(_DENSE_NAMES, self.st.dense, strict=False):
            w.add_dense_features_dims(tensor, module.in_features, module.out_features)
        self.add_pooling_metadata(w)


def _dense_plan(tensor: str, module: DenseModule) -> TensorPlan:
    ref = module.weight
    return TensorPlan(f"{tensor}.weight", ref.shape, ref.dtype, ref.load)
