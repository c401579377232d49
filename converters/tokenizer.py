"""Tokenizer files -> GGUF vocabulary metadata (``tokenizer.ggml.*``).

Three inputs are understood:

* a byte-level BPE ``tokenizer.json`` (Llama 3, Qwen, SmolLM...): written as ``gpt2`` with its
  merges; the pre-tokenizer is named the way llama.cpp names it, by hashing the ids of its check
  text (see :mod:`converters.pretok_hashes`);
* a SentencePiece ``tokenizer.model`` (Llama 2, Gemma, Phi-3...): written as ``llama`` with the
  model's own scores; the protobuf is read directly, no ``sentencepiece`` package needed;
* an SPM-style ``tokenizer.json`` (BPE with byte fallback and ``▁`` spaces, or Unigram) when no
  tokenizer.model exists: written as ``llama`` with scores derived from the merge ranks, so that
  llama.cpp (which merges the highest-scoring pair first) merges in the tokenizer's order.

Special token ids, add_bos/add_eos, merges and the chat template come from gguf-py's
``SpecialVocab``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from converters.checkpoint import read_json
from converters.pretok_hashes import CHECK_TEXT, PRE_TOKENIZER_HASHES
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)

SPM_SPACE = "\u2581"
_TT = gguf.TokenType


class UnknownPreTokenizerError(ConversionError):
    """A BPE tokenizer's pre-tokenizer hash is not one llama.cpp knows."""


@dataclass
class Vocab:
    """A vocabulary ready to be written: model kind, tokens, types and (for SPM) scores."""

    model: str  # "gpt2" or "llama"
    pre: str
    tokens: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    scores: list[float] | None = None
    add_space_prefix: bool | None = None
    #: SentencePiece normalisation for ``t5`` (Unigram) vocabularies
    remove_extra_whitespaces: bool | None = None
    precompiled_charsmap: bytes | None = None

    def __len__(self) -> int:
        return len(self.tokens)


def pre_tokenizer_hash(tokenizer_json: Path) -> str:
    """sha256 of the ids the tokenizer gives llama.cpp's check text (llama.cpp's identity)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_json)).encode(CHECK_TEXT).ids
    return hashlib.sha256(str(ids).encode()).hexdigest()


def _looks_special(text: str) -> bool:
    # Some checkpoints leave control-like added tokens unmarked; llama.cpp's own converter
    # treats these shapes as control tokens too.
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _added_token(text: str, special: bool) -> tuple[str, gguf.TokenType]:
    """(text, type) an added token is written with: control tokens raw, others with spaces."""
    if special or _looks_special(text):
        return text, _TT.CONTROL
    return text.replace(SPM_SPACE, " "), _TT.USER_DEFINED


def _append_pad(vocab: Vocab) -> None:
    """Append an unused placeholder token, ``[PAD<id>]``."""
    vocab.tokens.append(f"[PAD{len(vocab.tokens)}]")
    vocab.types.append(_TT.UNUSED)
    if vocab.scores is not None:
        vocab.scores.append(-1000.0)


def _added_tokens(src: Path, tok: dict[str, Any] | None) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) from tokenizer.json's added_tokens and tokenizer_config.json."""
    added: dict[int, tuple[str, bool]] = {}
    if tok is not None:
        for entry in tok.get("added_tokens", []):
            added[int(entry["id"])] = (entry["content"], bool(entry.get("special")))
    cfg_path = src / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        for tid, entry in (cfg.get("added_tokens_decoder") or {}).items():
            added.setdefault(int(tid), (entry["content"], bool(entry.get("special"))))
    return added


def _pad_to(vocab: Vocab, n_vocab: int) -> None:
    if len(vocab.tokens) > n_vocab:
        raise ConversionError(
            f"tokenizer has {len(vocab.tokens)} tokens but the embedding has {n_vocab} rows"
        )
    while len(vocab.tokens) < n_vocab:
        _append_pad(vocab)


def _is_spm_style(tok: dict[str, Any]) -> bool:
    model = tok.get("model", {})
    if model.get("type") == "Unigram":
        return True
    if model.get("type") != "BPE":
        return False
    return bool(model.get("byte_fallback")) or SPM_SPACE in json.dumps(tok.get("normalizer"))


def load_vocab(src: Path, n_vocab: int, *, pre_tokenizer: str | None = None) -> Vocab:
    """Build the vocabulary of the checkpoint in ``src`` for an embedding of ``n_vocab`` rows.

    Args:
        src: checkpoint folder.
        n_vocab: rows of the token embedding; the vocabulary is padded to this size.
        pre_tokenizer: name to write as ``tokenizer.ggml.pre`` instead of hash detection.

    Raises:
        UnknownPreTokenizerError: a BPE pre-tokenizer is not recognised and none was given.
        ConversionError: no usable tokenizer file.
    """
    tok_json = src / "tokenizer.json"
    tok = json.loads(tok_json.read_text(encoding="utf-8")) if tok_json.is_file() else None
    if (src / "tokenizer.model").is_file():
        vocab = _spm_from_model(src / "tokenizer.model", _added_tokens(src, tok))
    elif tok is not None and _is_spm_style(tok):
        vocab = _spm_from_json(tok, _added_tokens(src, tok))
    elif tok is not None and tok.get("model", {}).get("type") == "BPE":
        vocab = _bpe_from_json(tok_json, tok, _added_tokens(src, tok), pre_tokenizer)
    else:
        raise ConversionError(f"{src}: no tokenizer.model or BPE/Unigram tokenizer.json found")
    _pad_to(vocab, n_vocab)
    return vocab


def _bpe_from_json(
    path: Path, tok: dict[str, Any], added: dict[int, tuple[str, bool]], pre: str | None
) -> Vocab:
    if pre is None:
        digest = pre_tokenizer_hash(path)
        pre = PRE_TOKENIZER_HASHES.get(digest)
        plain = _plain_gpt2_pre_tokenizer(tok)
        if plain is not None and pre != plain:
            # The check text cannot tell every pair apart: e.g. a lone GPT-2 regex and
            # "digits split first" (smollm) give the same ids when the vocabulary has no
            # multi-digit tokens, yet differ on other numerals ("½"). A pre-tokenizer that is
            # exactly the GPT-2 byte-level regex is unambiguous, so it wins over the hash.
            logger.info("pre-tokenizer is plain byte-level GPT-2 (hash says %s)", pre)
            pre = plain
        if pre is None:
            raise UnknownPreTokenizerError(
                f"unknown BPE pre-tokenizer (check-text hash {digest}); if you know which "
                "llama.cpp pre-tokenizer it is, pass --pre-tokenizer NAME (e.g. llama-bpe, "
                "qwen2, gpt-2, smollm)"
            )
    logger.info("BPE pre-tokenizer: %s", pre)
    by_id: dict[int, str] = {int(i): t for t, i in tok["model"]["vocab"].items()}
    for tid, (content, _special) in added.items():
        by_id[tid] = content
    vocab = Vocab("gpt2", pre)
    for i in range(max(by_id) + 1 if by_id else 0):
        text = by_id.get(i)
        if text is None:
            _append_pad(vocab)
            continue
        ttype = _TT.NORMAL
        if i in added:
            text, ttype = _added_token(text, added[i][1])
        vocab.tokens.append(text)
        vocab.types.append(ttype)
    return vocab


def _plain_gpt2_pre_tokenizer(tok: dict[str, Any]) -> str | None:
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not tok.get("normalizer"):
        return "gpt-2"
    return None


def _apply_added(vocab: Vocab, added: dict[int, tuple[str, bool]]) -> None:
    assert vocab.scores is not None
    for tid, (content, special) in sorted(added.items()):
        while tid >= len(vocab.tokens):
            _append_pad(vocab)
        vocab.tokens[tid], vocab.types[tid] = _added_token(content, special)
        vocab.scores[tid] = -1000.0


def _spm_from_json(tok: dict[str, Any], added: dict[int, tuple[str, bool]]) -> Vocab:
    model = tok["model"]
    vocab = Vocab("llama", "default", scores=[])
    assert vocab.scores is not None
    unk = model.get("unk_token")
    if model["type"] == "Unigram":
        pieces = [(p, float(s)) for p, s in model["vocab"]]
        unk_id = model.get("unk_id")
    else:
        # llama.cpp merges the adjacent pair whose result scores highest; giving each token
        # minus the rank of the merge that creates it reproduces the BPE merge order.
        rank: dict[str, int] = {}
        for r, merge in enumerate(model.get("merges", [])):
            left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
            rank.setdefault(left + right, r)
        by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        if by_id and by_id[-1][1] != len(by_id) - 1:
            raise ConversionError("tokenizer.json vocabulary ids are not contiguous")
        # A multi-character token no merge creates is never produced by the HF tokenizer:
        # rank it below every merge so llama.cpp prefers anything else.
        unreachable = -float(len(rank) + 1)
        pieces = [
            (p, -float(rank[p]) if p in rank else (0.0 if len(p) == 1 else unreachable))
            for p, _ in by_id
        ]
        unk_id = model["vocab"].get(unk) if unk else None
    for i, (piece, score) in enumerate(pieces):
        vocab.tokens.append(piece)
        vocab.scores.append(score)
        if i == unk_id:
            vocab.types.append(_TT.UNKNOWN)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            vocab.types.append(_TT.BYTE)
        else:
            vocab.types.append(_TT.NORMAL)
    _apply_added(vocab, added)
    vocab.add_space_prefix = _json_adds_space_prefix(tok)
    return vocab


def _json_adds_space_prefix(tok: dict[str, Any]) -> bool:
    pre = tok.get("pre_tokenizer") or {}
    for p in pre.get("pretokenizers", [pre]):
        if p.get("type") == "Metaspace":
            if p.get("prepend_scheme") == "first":
                logger.warning(
                    "tokenizer prepends its dummy space only when the text does not start with "
                    "a space; llama.cpp always prepends it, so such texts tokenize differently"
                )
            return p.get("prepend_scheme", "always") != "never" and p.get("add_prefix_space", True)
    norm = tok.get("normalizer") or {}
    for n in norm.get("normalizers", [norm]):
        if n.get("type") == "Prepend" and n.get("prepend") == SPM_SPACE:
            return True
    return False


# --- encoder vocabularies (WordPiece, SentencePiece Unigram) -------------------------------


def _read_tokenizer_json(src: Path) -> dict[str, Any]:
    tok: dict[str, Any] = read_json(
        src / "tokenizer.json", missing="encoder vocabularies are read from it"
    )
    return tok


def load_wordpiece_vocab(src: Path, n_vocab: int) -> Vocab:
    """A WordPiece ``tokenizer.json`` (BERT) as llama.cpp's ``bert`` vocabulary.

    llama.cpp's WordPiece marks word starts instead of continuations: a piece that begins a
    word is stored with a leading ``▁`` and a ``##`` continuation without its ``##``. Special
    (control) tokens are stored as they are. llama.cpp's WordPiece always lower-cases and strips
    accents (BERT uncased); a cased tokenizer is refused.

    Raises:
        ConversionError: not a WordPiece tokenizer, a cased one, or ids that do not fit.
    """
    tok = _read_tokenizer_json(src)
    model = tok.get("model") or {}
    if model.get("type") != "WordPiece":
        raise ConversionError(f"{src}/tokenizer.json is {model.get('type')!r}, not WordPiece")
    prefix = str(model.get("continuing_subword_prefix", "##"))
    norm = tok.get("normalizer") or {}
    if norm.get("type") == "BertNormalizer" and norm.get("lowercase") is False:
        raise ConversionError(
            "cased WordPiece tokenizers are not supported: llama.cpp's WordPiece lower-cases"
        )
    added = _added_tokens(src, tok)
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    for tid, (content, _special) in added.items():
        by_id[tid] = content
    vocab = Vocab("bert", "default")
    for i in range(max(by_id) + 1 if by_id else 0):
        text = by_id.get(i)
        if text is None:
            _append_pad(vocab)
        elif i in added and (added[i][1] or _looks_special(text)):
            vocab.tokens.append(text)
            vocab.types.append(_TT.CONTROL)
        else:
            word_start = not text.startswith(prefix)
            vocab.tokens.append(SPM_SPACE + text if word_start else text[len(prefix) :])
            vocab.types.append(_TT.USER_DEFINED if i in added else _TT.NORMAL)
    _pad_to(vocab, n_vocab)
    return vocab


def load_unigram_vocab(src: Path, n_vocab: int) -> Vocab:
    """A SentencePiece Unigram ``tokenizer.json`` (XLM-RoBERTa) as llama.cpp's ``t5`` vocabulary.

    llama.cpp's ``t5`` tokenizer is SentencePiece's Unigram (Viterbi over the pieces' scores)
    with SentencePiece's normaliser: the precompiled character map, the dummy prefix and the
    collapsing of whitespace runs, each read from the tokenizer.json normaliser/pre-tokenizer.

    Raises:
        ConversionError: not a Unigram tokenizer.json.
    """
    import base64

    tok = _read_tokenizer_json(src)
    model = tok.get("model") or {}
    if model.get("type") != "Unigram":
        raise ConversionError(f"{src}/tokenizer.json is {model.get('type')!r}, not Unigram")
    vocab = Vocab("t5", "default", scores=[])
    assert vocab.scores is not None
    unk_id = model.get("unk_id")
    for i, (piece, score) in enumerate(model["vocab"]):
        vocab.tokens.append(piece)
        vocab.scores.append(float(score))
        vocab.types.append(_TT.UNKNOWN if i == unk_id else _TT.NORMAL)
    for tid, (content, special) in sorted(_added_tokens(src, tok).items()):
        while tid >= len(vocab.tokens):
            _append_pad(vocab)
        if tid == unk_id:
            continue
        vocab.tokens[tid], vocab.types[tid] = _added_token(content, special)
        vocab.scores[tid] = 0.0
    vocab.add_space_prefix = _json_adds_space_prefix(tok)
    norm = tok.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm else []
    pre = tok.get("pre_tokenizer") or {}
    pre_steps = pre.get("pretokenizers", [pre]) if pre else []
    # SentencePiece's remove_extra_whitespaces (strip, collapse runs) is spelt as a
    # WhitespaceSplit pre-tokenizer (XLM-R's tokenizer.json) or a Replace(" {2,}", " ") step
    vocab.remove_extra_whitespaces = any(
        p.get("type") in ("WhitespaceSplit", "Whitespace") for p in pre_steps
    ) or any(
        n.get("type") == "Replace"
        and (n.get("pattern") or {}).get("Regex") == " {2,}"
        and n.get("content") == " "
        for n in steps
    )
    for n in steps:
        if n.get("type") == "Precompiled" and n.get("precompiled_charsmap"):
            vocab.precompiled_charsmap = base64.b64decode(n["precompiled_charsmap"])
        elif n.get("type") not in ("Precompiled", "Replace", None):
            logger.warning("tokenizer.json normaliser step %s is not represented in GGUF",
                           n.get("type"))  # fmt: skip
    _pad_to(vocab, n_vocab)
    return vocab


# --- SentencePiece model protobuf ------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """Decode one protobuf message level into (field number, wire type, value) triples."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        val: int | bytes
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ConversionError(f"tokenizer.model: unsupported protobuf wire type {wire}")
        out.append((num, wire, val))
    return out


def _spm_from_model(path: Path, added: dict[int, tuple[str, bool]]) -> Vocab:
    try:
        top = _fields(path.read_bytes())
    except (IndexError, ConversionError) as exc:
        raise ConversionError(f"{path}: not a SentencePiece model: {exc}") from exc
    vocab = Vocab("llama", "default", scores=[])
    assert vocab.scores is not None
    add_dummy_prefix = True
    for num, _wire, val in top:
        if num == 1:  # ModelProto.pieces
            piece, score, kind = "", 0.0, 1
            for fnum, _w, fval in _fields(val):
                if fnum == 1:
                    piece = fval.decode("utf-8")
                elif fnum == 2:
                    (score,) = struct.unpack("<f", fval)
                elif fnum == 3:
                    kind = int(fval)
            vocab.tokens.append(piece)
            vocab.scores.append(score)
            # SentencePiece's piece types use the same numbering as GGUF's token types.
            vocab.types.append(kind)
        elif num == 3:  # ModelProto.normalizer_spec
            for fnum, _w, fval in _fields(val):
                if fnum == 3:
                    add_dummy_prefix = bool(fval)
    _apply_added(vocab, added)
    vocab.add_space_prefix = add_dummy_prefix
    return vocab


def write_vocab(w: gguf.GGUFWriter, vocab: Vocab, src: Path) -> None:
    """Add the vocabulary, special tokens, merges and chat template to a GGUF writer."""
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.remove_extra_whitespaces is not None:
        w.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.precompiled_charsmap:
        w.add_precompiled_charsmap(vocab.precompiled_charsmap)
    special = gguf.SpecialVocab(src, load_merges=vocab.model == "gpt2", n_vocab=len(vocab))
    special.add_to_gguf(w, quiet=True)
