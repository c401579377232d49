"""Real vocabularies: pre-tokenizer identification and tokenization vs the HF tokenizer.

llama.cpp ships real vocabularies (``models/ggml-vocab-*.gguf``) with test texts (``.inp``) and
the ids the family's own Hugging Face tokenizer gives them (``.out``). Each vocabulary is turned
into a Hugging Face tokenizer.json, put in a tiny checkpoint and converted; the converted file
must tokenize llama.cpp's test texts and our varied set like that tokenizer.

Two ways to make the tokenizer.json: transformers' GGUF loader (``VOCABS``), and, for the
families transformers cannot load from GGUF or whose pre-tokenizer it does not rebuild
(``FAMILY_VOCABS``), tokens and merges from the GGUF plus the family's pre-tokenizer split
rules. The latter must first reproduce the ``.out`` ids exactly (so it is the family's
tokenizer on those texts); then the converter must detect the family's pre-tokenizer by its
hash and llama.cpp must tokenize like it.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from converters.st2gguf import convert
from converters.verify import SAMPLE_TEXTS, hf_token_ids, llama_token_ids
from tests.support import record

from . import builders
from .texts import EXTRA_TEXTS

# SentencePiece vocabularies transformers rebuilds faithfully -> models.yaml families
VOCABS = {"phi-3": ("phi3",)}


def _vocab_test_texts(vocab_dir: Path, name: str) -> list[str]:
    inp = vocab_dir / f"ggml-vocab-{name}.gguf.inp"
    return inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")


def _convert_vocab(vocab_dir: Path, name: str, tmp_path: Path) -> tuple[Path, Path]:
    """(tiny checkpoint with the vocabulary's HF tokenizer, converted GGUF)."""
    from transformers import AutoTokenizer

    vocab = vocab_dir / f"ggml-vocab-{name}.gguf"
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    shutil.copy(vocab, tok_dir / "v.gguf")
    AutoTokenizer.from_pretrained(tok_dir, gguf_file="v.gguf").save_pretrained(tok_dir / "hf")
    return _tiny_with_tokenizer(tok_dir / "hf", tmp_path)


def _tiny_with_tokenizer(tok_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A 1-layer, 32-wide llama checkpoint around ``tok_dir``'s tokenizer.json, converted."""
    from tokenizers import Tokenizer

    n_vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size()
    src = builders.build_tiny(
        "llama", tmp_path / "src", tok_dir,
        overrides={"vocab_size": n_vocab, "hidden_size": 32, "intermediate_size": 32,
                   "num_hidden_layers": 1},
    )  # fmt: skip
    return src, convert(src, tmp_path / "m.gguf", outtype="q8_0")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, llama_cpp_models_dir):
    """``converted(name)`` -> (checkpoint, GGUF), built once per module."""

    @functools.cache
    def get(name: str) -> tuple[Path, Path]:
        return _convert_vocab(llama_cpp_models_dir, name, tmp_path_factory.mktemp("vocab"))

    return get


def _mismatches(src: Path, out: Path, texts: list[str]) -> list[str]:
    want = hf_token_ids(src, texts)
    assert want is not None
    got = llama_token_ids(out, texts)
    return [t for t, w, g in zip(texts, want, got, strict=True) if w != g]


@pytest.mark.parametrize("name", list(VOCABS))
def test_real_vocabulary(name, converted, llama_cpp_models_dir):
    src, out = converted(name)
    texts = [*_vocab_test_texts(llama_cpp_models_dir, name), *SAMPLE_TEXTS, *EXTRA_TEXTS]
    mismatches = _mismatches(src, out, texts)
    for family in VOCABS[name]:
        record(family, "tokenizer", passed=not mismatches, detail=name)
    assert mismatches == []


def test_llama_spm_vocabulary(converted, llama_cpp_models_dir):
    """Llama 2's vocabulary as transformers writes it (Metaspace, prepend_scheme "first")."""
    src, out = converted("llama-spm")
    texts = [*_vocab_test_texts(llama_cpp_models_dir, "llama-spm"), *SAMPLE_TEXTS, *EXTRA_TEXTS]
    leading = [t for t in texts if t[:1].isspace()]
    assert _mismatches(src, out, [t for t in texts if t not in leading]) == []
    assert leading, "the text set must exercise leading whitespace"


LEADING_SPACE_REASON = (
    "llama.cpp's SPM tokenizer always prepends the dummy space; Metaspace with "
    "prepend_scheme='first' skips it when the text already starts with a space"
)


@pytest.mark.known_upstream
@pytest.mark.xfail(strict=True, reason=LEADING_SPACE_REASON)
def test_llama_spm_leading_space(converted):
    src, out = converted("llama-spm")
    assert _mismatches(src, out, [" ", "  Hello", " world"]) == []


# --- family vocabularies with their own pre-tokenizer split rules --------------------------

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK_LLM_LETTERS = (
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-"
    "\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57"
    "\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4"
    "\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d"
    "\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b"
    "\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f"
    "\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-"
    "\U0001e943]+"
)
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"

# vocabulary -> (split regexes applied in order, ignore_merges, models.yaml families it proves,
#                pre-tokenizer names the converter may detect). The regexes are the families'
# published pre-tokenizer rules; MPT's hash equals OLMo's, and both names select the GPT-2 rule.
FAMILY_VOCABS: dict[str, tuple[list[str], bool, tuple[str, ...], tuple[str, ...]]] = {
    "falcon": ([r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"], False, ("falcon",),
               ("falcon",)),
    "mpt": ([_GPT2], False, ("mpt",), ("mpt", "olmo")),
    "starcoder": ([r"\p{N}", _GPT2], False, ("starcoder", "starcoder2"), ("starcoder",)),
    "refact": ([r"\p{N}", _GPT2], False, (), ("refact",)),
    "command-r": ([r"\p{N}", _GPT2], False, ("command-r",), ("command-r",)),
    "gpt-2": ([_GPT2], False, ("gpt2",), ("gpt-2",)),
    "llama-bpe": ([_LLAMA3], True, ("llama",), ("llama-bpe",)),
    "qwen2": ([_QWEN2], False, ("qwen2", "qwen3"), ("qwen2",)),
    "deepseek-llm": (["[\r\n]", _DEEPSEEK_LLM_LETTERS, "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
                      "\\s+$", _CJK, r"\p{N}+"], False, ("deepseek-llm",), ("deepseek-llm",)),
    "deepseek-coder": (["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"], False, (),
                       ("deepseek-coder",)),
}  # fmt: skip


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip


def _gguf_fields(path: Path) -> dict[str, object]:
    """The key/value section of a GGUF file (gguf-py's reader takes minutes on 256k tokens)."""
    import struct

    import numpy as np

    buf = path.read_bytes()
    if buf[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    pos = 4 + 4 + 8
    (n_kv,) = struct.unpack_from("<Q", buf, pos)
    pos += 8

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        return buf[pos - n : pos].decode("utf-8", errors="surrogateescape")

    def value(kind: int) -> object:
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            item, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item == 8:
                return [string() for _ in range(n)]
            dtype = np.dtype(_SCALARS[item])
            arr = np.frombuffer(buf, dtype, n, pos)
            pos += dtype.itemsize * n
            return arr.tolist()
        fmt = _SCALARS[kind]
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    fields: dict[str, object] = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        fields[key] = value(kind)
    return fields


#: vocabularies whose family tokenizer adds BOS although the vocab file does not say so
ADDS_BOS = {"ggml-vocab-llama-bpe"}


def _family_tokenizer_json(vocab: Path, splits: list[str], ignore_merges: bool, out: Path) -> Path:
    """A byte-level BPE tokenizer.json from a llama.cpp vocabulary and the family's splits."""
    import gguf

    fields = _gguf_fields(vocab)
    tokens: list[str] = fields["tokenizer.ggml.tokens"]  # type: ignore[assignment]
    types: list[int] = fields["tokenizer.ggml.token_type"]  # type: ignore[assignment]
    control, user = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": ty == user, "special": ty == control}
        for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty in (control, user)
    ]  # fmt: skip
    pre = [
        {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False}
        for rx in splits
    ]
    pre.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                "use_regex": False})  # fmt: skip
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": fields["tokenizer.ggml.merges"]},
    }  # fmt: skip
    config: dict[str, str] = {}
    for role in ("bos", "eos"):
        tid = fields.get(f"tokenizer.ggml.{role}_token_id")
        if tid is not None:
            config[f"{role}_token"] = tokens[int(tid)]  # type: ignore[call-overload]
    if (vocab.stem in ADDS_BOS or fields.get("tokenizer.ggml.add_bos_token")) and (
        "bos_token" in config
    ):
        # the family's tokenizer adds BOS (llama.cpp's pre-tokenizer hashes include it)
        bos, bos_id = config["bos_token"], int(fields["tokenizer.ggml.bos_token_id"])  # type: ignore[call-overload]
        seq = [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
        spec["post_processor"] = {
            "type": "TemplateProcessing", "single": seq,
            "pair": [*seq, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }  # fmt: skip
    out.mkdir(parents=True)
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


@pytest.mark.parametrize("name", list(FAMILY_VOCABS))
def test_family_vocabulary(name, llama_cpp_models_dir, tmp_path):
    """The family's tokenizer gives llama.cpp's recorded ids; the converted GGUF matches it."""
    from tokenizers import Tokenizer

    splits, ignore_merges, families, pre_names = FAMILY_VOCABS[name]
    vocab = llama_cpp_models_dir / f"ggml-vocab-{name}.gguf"
    tok_dir = _family_tokenizer_json(vocab, splits, ignore_merges, tmp_path / "tok")
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    inp = _vocab_test_texts(llama_cpp_models_dir, name)
    recorded = (llama_cpp_models_dir / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8")
    want = [[int(x) for x in line.split()] for line in recorded.split("\n")[: len(inp)]]
    got = [tok.encode(t, add_special_tokens=False).ids for t in inp]
    assert got == want, "tokenizer.json is not the family's"

    src, out = _tiny_with_tokenizer(tok_dir, tmp_path)
    detected = _gguf_fields(out)["tokenizer.ggml.pre"]
    mismatches = _mismatches(src, out, [*inp, *SAMPLE_TEXTS, *EXTRA_TEXTS])
    ok = detected in pre_names and not mismatches
    for family in families:
        record(family, "tokenizer", passed=ok, detail=name)
    assert detected in pre_names
    assert mismatches == []
