"""Tiny tokenizers and sentence-transformers folder files for the encoder checkpoints.

The WordPiece and Unigram vocabularies are made from the corpus here, not trained: the
``tokenizers`` trainers for those two models are not deterministic, and a cached checkpoint must
be rebuilt bit for bit. The byte-level BPE trainer is deterministic and is used as it is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: tokenizer training text: everyday sentences, so that the test texts tokenize into words
CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Paris is the capital of France and a large city on the Seine.",
    "A GGUF file holds tensors and metadata for llama.cpp models.",
    "Embeddings turn sentences into vectors; similar texts get similar vectors.",
    "Rerankers score how well a document answers a query: yes or no.",
    "What is the capital of France? The answer is Paris, of course.",
    "Cats sleep most of the day, while dogs like to play in the park.",
    "The weather today is sunny with a light wind from the west.",
    "Machine learning models learn patterns from data and examples.",
    "Query: document: instruct: judge whether it meets the requirements.",
    "yes no yes no maybe yes no",
    "yes",
    "no",
]


def _train(tok: Any, trainer: Any) -> None:
    tok.train_from_iterator(CORPUS * 30, trainer)


def _corpus_words(*, lower: bool) -> dict[str, int]:
    """Words (letters/digits runs) and punctuation marks of the corpus, counted."""
    counts: dict[str, int] = {}
    for line in CORPUS:
        for word in re.findall(r"\w+|[^\w\s]", line.lower() if lower else line):
            counts[word] = counts.get(word, 0) + 1
    return counts


#: word pieces that split longer words (the tokenizers' trainers are not deterministic, so the
#: WordPiece and Unigram vocabularies are made here from the corpus instead)
_PIECES = ("embed", "sent", "vector", "ing", "ed", "s", "er", "ly", "tion", "ences", "dings")


def wordpiece_tokenizer(out: Path) -> int:
    """BERT uncased WordPiece: [PAD] [UNK] [CLS] [SEP] [MASK] first, ``[CLS] A [SEP] B [SEP]``.

    The vocabulary: every character (word-initial and ``##`` continuation), the corpus's words
    of up to 5 characters, and a few pieces, so longer words split into several tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = _corpus_words(lower=True)
    chars = sorted({c for w in words for c in w})
    pieces = [p for p in _PIECES if len(p) > 1]
    entries = chars + ["##" + c for c in chars] + sorted(w for w in words if 1 < len(w) <= 5)
    entries += pieces + ["##" + p for p in _PIECES]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + entries))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )  # fmt: skip
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "cls_token": "[CLS]",
              "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
              "mask_token": "[MASK]"}  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return int(tok.get_vocab_size())


def nmt_nfkc_charsmap() -> bytes:
    """SentencePiece's ``nmt_nfkc`` character map (XLM-R's normaliser), as compiled into a model.

    sentencepiece compiles its built-in rule into every model it trains; a throwaway model of a
    few pieces is trained to read it back (the same bytes every time).
    """
    import io

    import sentencepiece as spm

    from converters.tokenizer import _fields  # the converter's protobuf reader

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world this is a test"] * 50), model_writer=buf,
        vocab_size=16, hard_vocab_limit=False, model_type="unigram",
        normalization_rule_name="nmt_nfkc", num_threads=1, minloglevel=2,
    )  # fmt: skip
    spec = next(v for n, _, v in _fields(buf.getvalue()) if n == 3)  # ModelProto.normalizer_spec
    return bytes(next(v for n, _, v in _fields(spec) if n == 2))  # .precompiled_charsmap


def unigram_tokenizer(out: Path) -> int:
    """XLM-R-style SentencePiece Unigram: <s> <pad> </s> <unk> first, <mask> last,
    ``<s> A </s></s> B </s>``, whitespace split off (runs collapse, ends are stripped), a dummy
    prefix space.

    Pieces: ``▁word`` for the corpus's words of up to 6 characters (scored by frequency), the
    word pieces, and every character with and without ``▁`` (scored low), so longer and unseen
    words are segmented by the Unigram lattice.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    words = _corpus_words(lower=False)
    total = sum(words.values())
    pieces: dict[str, float] = {}
    for word, count in sorted(words.items()):
        if len(word) <= 6:
            pieces["\u2581" + word] = math.log(count / total)
    for piece in _PIECES:
        pieces.setdefault(piece, -9.0 - len(piece) / 10)
        pieces.setdefault("\u2581" + piece, -9.5)
    for c in sorted({c for w in words for c in w} | set("\u2581")):
        pieces.setdefault(c, -12.0)
        pieces.setdefault("\u2581" + c, -12.5)
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = specials + sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0])) + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    # XLM-R's tokenizer.json layout: the SentencePiece character map as the normaliser,
    # whitespace split off, then the dummy prefix
    tok.normalizer = normalizers.Precompiled(nmt_nfkc_charsmap())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"),
    ])  # fmt: skip
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens([t for t, _ in specials] + ["<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
              "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
              "pad_token": "<pad>", "mask_token": "<mask>"}  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return int(tok.get_vocab_size())


def bpe_tokenizer(out: Path, specials: list[str], template: tuple[str, str] | None,
                  config: dict[str, str]) -> int:  # fmt: skip
    """Byte-level BPE (GPT-2 pre-tokenizer) with ``specials`` first and an optional
    (single, pair) post-processing template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    _train(tok, trainer)
    if template is not None:
        used = {t for t in specials if t in template[0] or t in template[1]}
        tok.post_processor = processors.TemplateProcessing(
            single=template[0], pair=template[1],
            special_tokens=[(t, tok.token_to_id(t)) for t in sorted(used)],
        )  # fmt: skip
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return int(tok.get_vocab_size())


# --- sentence-transformers folder files -------------------------------------------------------


def write_sentence_transformers(
    out: Path, dim: int, pooling: str, *, normalize: bool, dense: Sequence[Any] = ()
) -> None:
    """modules.json, 1_Pooling/config.json, {n}_Dense (bias-free, identity) and Normalize."""
    from safetensors.torch import save_file

    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]  # fmt: skip
    (out / "1_Pooling").mkdir()
    flags = {f"pooling_mode_{m}": pooling == m for m in
             ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
              "weightedmean_tokens", "lasttoken")}  # fmt: skip
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dim, **flags, "include_prompt": True})
    )
    for linear in dense:
        idx = len(modules)
        path = f"{idx}_Dense"
        (out / path).mkdir()
        cfg = {
            "in_features": linear.in_features,
            "out_features": linear.out_features,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        }
        (out / path / "config.json").write_text(json.dumps(cfg))
        weight = linear.weight.detach().contiguous()
        save_file({"linear.weight": weight}, str(out / path / "model.safetensors"))
        modules.append({"idx": idx, "name": str(idx), "path": path,
                        "type": "sentence_transformers.models.Dense"})  # fmt: skip
    if normalize:
        idx = len(modules)
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})  # fmt: skip
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
