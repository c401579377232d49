"""BERT-layout encoders: BERT, XLM-RoBERTa, and XLM-RoBERTa sequence classifiers (rerankers).

All three are llama.cpp's ``bert`` architecture: absolute position embeddings, post-norm
blocks, GELU feed-forward, non-causal attention, and a pooled output.

- BERT: WordPiece vocabulary (llama.cpp's ``bert`` tokenizer); default pooling CLS.
- XLM-RoBERTa: SentencePiece Unigram vocabulary (``t5`` tokenizer). RoBERTa numbers positions
  from ``padding_idx + 1`` (the rows before are never used), while llama.cpp numbers them from 0,
  so the first ``pad_token_id + 1`` rows of the position table are dropped and the context
  length shrinks by as many.
- XLM-RoBERTa sequence classification (bge-reranker...): ``classifier.dense`` becomes
  ``cls`` (tanh after it in llama.cpp, as in RoBERTa's head) and ``classifier.out_proj``
  ``cls.output``; the pooling is RANK over the CLS token.

llama.cpp feeds token type 0 for every token. That equals transformers for single texts and for
RoBERTa pairs (one token type), not for BERT pairs (second segment type 1), so BERT sequence
classifiers (cross-encoders) are not offered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import gguf

from converters.archs.base import GELU_ACTIVATIONS, TensorPlan
from converters.archs.encoder import EncoderConverter
from converters.checkpoint import Checkpoint, TensorRef
from converters.tokenizer import Vocab, load_unigram_vocab, load_wordpiece_vocab
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)


class BertConverter(EncoderConverter):
    hf_architectures: ClassVar[tuple[str, ...]] = (
        "BertModel",
        "BertForMaskedLM",
        "BertForPreTraining",
    )
    gguf_arch = gguf.MODEL_ARCH.BERT
    default_pooling = gguf.PoolingType.CLS
    layer_norm_eps_keys = ("layer_norm_eps",)
    #: the prefix task-head checkpoints put before the encoder's tensors
    prefixes: tuple[str, ...] = ("bert.",)
    #: checkpoint tensors llama.cpp's bert graph does not use (MLM/NSP heads, pooler)
    unused: tuple[str, ...] = ("embeddings.position_ids", "pooler.", "cls.", "lm_head.")

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        pos_type = self.cfg.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ConversionError(f"position_embedding_type={pos_type!r} is not supported")
        self.check_activation("hidden_act", "gelu", GELU_ACTIVATIONS)

    # positions llama.cpp's position 0 is at in the checkpoint's table
    @property
    def position_offset(self) -> int:
        return 0

    def _strip(self, hf_name: str) -> str:
        for prefix in self.prefixes:
            if hf_name.startswith(prefix):
                return hf_name[len(prefix) :]
        return hf_name

    def skip(self, hf_name: str) -> bool:
        return self._strip(hf_name).startswith(self.unused)

    def gguf_name(self, hf_name: str) -> str:
        return super().gguf_name(self._strip(hf_name))

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        off = self.position_offset
        if self._strip(hf_name) == "embeddings.position_embeddings.weight" and off:
            rows, cols = ref.shape
            name = self.gguf_name(hf_name)
            yield TensorPlan(name, (rows - off, cols), ref.dtype, lambda: ref.load()[off:], False)
            return
        yield self.passthrough(hf_name, ref)

    @staticmethod
    def keeps_f32(gguf_name: str, shape: tuple[int, ...]) -> bool:
        # llama.cpp adds the token-type row to the embeddings with ggml_add, which has no
        # quantized operand on the CPU: that table stays float32
        # (and the classifier head, n_embd^2 + n_embd values, whose rounding would move every
        # score directly)
        return gguf_name.startswith(("token_types.", "cls.")) or EncoderConverter.keeps_f32(
            gguf_name, shape
        )

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        cfg = self.cfg
        w.add_block_count(self.n_layers)
        w.add_context_length(int(self.require("max_position_embeddings")) - self.position_offset)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(int(self.require("intermediate_size")))
        w.add_head_count(self.n_head)
        w.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-12)))
        w.add_token_type_count(int(cfg.get("type_vocab_size", 2)))
        self.add_pooling_metadata(w)

    def load_vocab(self, src: Path, n_vocab: int, *, pre_tokenizer: str | None = None) -> Vocab:
        return load_wordpiece_vocab(src, n_vocab)


class XLMRobertaConverter(BertConverter):
    hf_architectures: ClassVar[tuple[str, ...]] = ("XLMRobertaModel", "XLMRobertaForMaskedLM")
    prefixes = ("roberta.",)

    @property
    def position_offset(self) -> int:
        pad = self.cfg.get("pad_token_id")
        return 0 if pad is None else int(pad) + 1

    def load_vocab(self, src: Path, n_vocab: int, *, pre_tokenizer: str | None = None) -> Vocab:
        return load_unigram_vocab(src, n_vocab)


class XLMRobertaRerankerConverter(XLMRobertaConverter):
    """XLMRobertaForSequenceClassification: a cross-encoder scoring (query, document) pairs."""

    hf_architectures = ("XLMRobertaForSequenceClassification",)
    unused = ("embeddings.position_ids", "pooler.", "lm_head.")

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        if self.st.pooling is not None or self.st.dense:
            raise ConversionError("a sequence classifier with sentence-transformers pooling "
                                  "modules is not supported")  # fmt: skip
        labels = self.cfg.get("id2label") or {"0": "LABEL_0"}
        self.labels = [str(labels[k]) for k in sorted(labels, key=int)]
        if self.cfg.get("problem_type") not in (None, "regression", "single_label_classification"):
            raise ConversionError(f"problem_type {self.cfg['problem_type']!r} is not supported")

    @property
    def pooling(self) -> gguf.PoolingType:
        return gguf.PoolingType.RANK

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        w.add_classifier_output_labels(self.labels)
