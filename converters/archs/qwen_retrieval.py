"""Qwen3 retrieval models: Qwen3-Embedding (last-token pooling) and Qwen3-Reranker.

Both are the Qwen3 decoder unchanged (causal attention; llama.cpp's ``qwen3`` architecture).

- Embedding: the hidden state of the last token (the tokenizer appends ``<|endoftext|>``),
  L2-normalised; read from the sentence-transformers folder, last-token pooling by default. It
  is published as ``Qwen3Model`` (no LM head, tensors without the ``model.`` prefix) or as
  ``Qwen3ForCausalLM`` with a sentence-transformers folder.
- Reranker: a causal LM asked, through a fixed prompt, whether a document answers a query; the
  score is P("yes") against "no" at the last position. llama.cpp represents it as pooling RANK
  over the last token with a two-row ``cls.output`` (the LM head rows of "yes" and "no", in that
  order; llama.cpp's qwen3 graph applies a softmax over them), labels ``["yes", "no"]``, and
  the prompt in ``tokenizer.chat_template.rerank`` with ``{query}`` and ``{document}`` slots.
  The checkpoint is an ordinary ``Qwen3ForCausalLM``; it is recognised by its name (folder or
  ``_name_or_path`` containing "qwen3-reranker") or a README titled "Qwen3-Reranker".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import gguf
import numpy as np

from converters.archs.base import TensorPlan, derived_plan
from converters.archs.encoder import NORMALIZE_KEY, EncoderConverter, name_hints
from converters.archs.qwen import Qwen3Converter
from converters.checkpoint import Checkpoint, TensorRef
from ggufworker.errors import ConversionError

#: Qwen3-Reranker's prompt (its model card's system text, default instruction and layout)
RERANK_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
RERANK_TEMPLATE = (
    f"<|im_start|>system\n{RERANK_SYSTEM}<|im_end|>\n"
    f"<|im_start|>user\n<Instruct>: {RERANK_INSTRUCTION}\n"
    "<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
#: the answer tokens whose logits are compared, in cls.output row order
RERANK_LABELS = ("yes", "no")


def is_qwen3_reranker(ckpt: Checkpoint) -> bool:
    """Whether a Qwen3ForCausalLM checkpoint is a Qwen3-Reranker (by name or README title)."""
    if any("qwen3-reranker" in hint for hint in name_hints(ckpt)):
        return True
    readme = ckpt.dir / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace").lower()
        return "# qwen3-reranker" in text
    return False


def _token_id(src: Path, token: str) -> int:
    """The id of a literal token in tokenizer.json (vocabulary or added tokens)."""
    path = src / "tokenizer.json"
    if not path.is_file():
        raise ConversionError(f"{src}: a reranker needs tokenizer.json to find {token!r}")
    tok = json.loads(path.read_text(encoding="utf-8"))
    for entry in tok.get("added_tokens", []):
        if entry.get("content") == token:
            return int(entry["id"])
    vocab = (tok.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, dict) and token in vocab:
        return int(vocab[token])
    raise ConversionError(f"the reranker's tokenizer has no {token!r} token")


class Qwen3EmbeddingConverter(EncoderConverter, Qwen3Converter):
    hf_architectures = ("Qwen3Model",)
    default_pooling = gguf.PoolingType.LAST
    causal = True

    def skip(self, hf_name: str) -> bool:
        # embeddings never use the LM head
        return hf_name == "lm_head.weight" or super().skip(hf_name)

    def gguf_name(self, hf_name: str) -> str:
        if not hf_name.startswith("model."):
            hf_name = "model." + hf_name
        return super().gguf_name(hf_name)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        self.add_pooling_metadata(w)


class Qwen3RerankerConverter(Qwen3Converter):
    """A Qwen3-Reranker checkpoint (chosen by :meth:`Qwen3Converter.for_checkpoint`)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        self.label_ids = [_token_id(ckpt.dir, t) for t in RERANK_LABELS]
        self.tied = "lm_head.weight" not in ckpt.tensors

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        head = "model.embed_tokens.weight" if self.tied else "lm_head.weight"
        if hf_name == head:
            rows = self.label_ids
            name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.CLS_OUT] + ".weight"
            yield derived_plan(name, (len(rows), ref.shape[1]), ref, lambda d: np.take(d, rows, 0))
            if self.tied:
                yield self.passthrough(hf_name, ref)
            return
        yield self.passthrough(hf_name, ref)

    def skip(self, hf_name: str) -> bool:
        return False if hf_name == "lm_head.weight" else super().skip(hf_name)

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        super().add_metadata(w)
        w.add_pooling_type(gguf.PoolingType.RANK)
        w.add_classifier_output_labels(list(RERANK_LABELS))
        w.add_string(gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name="rerank"), RERANK_TEMPLATE)
        w.add_array(gguf.Keys.Tokenizer.CHAT_TEMPLATES, ["rerank"])
        w.add_bool(NORMALIZE_KEY, False)
