"""Check a converted GGUF against its source.

``check_structure`` reads the file back with gguf-py and compares tensor names, shapes, types
and count with what was planned. ``check_tokenization`` loads the vocabulary in llama.cpp and
compares its token ids with the Hugging Face tokenizer's on a varied text set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from converters.quantize import quiet_llama_log
from ggufworker.errors import VerificationError

logger = logging.getLogger(__name__)

#: Text that exercises pre-tokenizers and byte fallback: unicode, CJK, emoji, code,
#: whitespace runs, digits, apostrophes.
SAMPLE_TEXTS: tuple[str, ...] = (
    "Hello world",
    " Hello  world ",
    "The quick brown fox jumps over the lazy dog.",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "3 33 333 3333 33333 3.14159 1,000,000 2024-01-01",
    "numerals: ½ ¾ x² y³ ① Ⅻ ٣٤٥ ४२",
    "naïve café résumé Straße Ελληνικά русский язык",
    "我想在apple工作1314151天～ 日本語のテキスト 한국어 텍스트",
    "emoji: 🚀🦙😶\u200d🌫️ ✅ 👍🏽",
    "def f(x):\n    return x ** 2  # square\n\n\tif x:\n\t\tpass",
    "   leading spaces\n\n\nnewlines\t\ttabs    trailing   ",
    '<html><body class="a">text &amp; more</body></html>',
    "ـــ العربية עברית हिन्दी ไทย",
    "",
)


#: Byte size of each scalar GGUF value type.
_SCALAR_SIZES: dict[int, int] = {
    vtype: np.dtype(np_type).itemsize
    for vtype, np_type in gguf.GGUFReader.gguf_scalar_to_np.items()
}


def read_tensor_infos(
    path: Path,
) -> list[tuple[str, tuple[tuple[int, ...], gguf.GGMLQuantizationType]]]:
    """Tensor names, numpy-order shapes and types of a GGUF file, in file order.

    Reads only the header: key/values are skipped, not decoded (gguf-py's reader decodes every
    vocabulary string, which takes half a minute on a 256k-token vocabulary).
    """
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        magic, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", data, 0)
        if magic != gguf.GGUF_MAGIC or version < 2:
            raise ValueError("bad GGUF magic or version")
        pos = 24

        def u32() -> int:
            nonlocal pos
            pos += 4
            return struct.unpack_from("<I", data, pos - 4)[0]

        def u64() -> int:
            nonlocal pos
            pos += 8
            return struct.unpack_from("<Q", data, pos - 8)[0]

        def skip_value(vtype: int) -> None:
            nonlocal pos
            if vtype == gguf.GGUFValueType.STRING:
                n = u64()  # read before adding: ``pos += u64()`` would lose u64's advance
                pos += n
            elif vtype == gguf.GGUFValueType.ARRAY:
                item, count = u32(), u64()
                if item in _SCALAR_SIZES:
                    pos += count * _SCALAR_SIZES[item]
                else:
                    for _ in range(count):
                        skip_value(item)
            else:
                pos += _SCALAR_SIZES[gguf.GGUFValueType(vtype)]

        for _ in range(n_kv):
            skip_value(gguf.GGUFValueType.STRING)  # key
            skip_value(u32())
        infos = []
        for _ in range(n_tensors):
            n = u64()
            name = bytes(data[pos : pos + n]).decode("utf-8")
            pos += n
            dims = [u64() for _ in range(u32())]
            ttype = gguf.GGMLQuantizationType(u32())
            u64()  # offset
            infos.append((name, (tuple(reversed(dims)), ttype)))
        return infos
    finally:
        data.close()


def check_structure(
    path: Path,
    expected: dict[str, tuple[tuple[int, ...], gguf.GGMLQuantizationType]] | None,
    *,
    expected_names: Sequence[str] | None = None,
) -> None:
    """Read ``path`` back and compare its tensors with the plan.

    Args:
        path: GGUF file.
        expected: name -> (numpy shape, type); types are compared when given.
        expected_names: only names and count (for files re-typed by llama.cpp's quantizer).

    Raises:
        VerificationError: the file cannot be read or differs from the plan.
    """
    try:
        infos = read_tensor_infos(path)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise VerificationError(f"{path}: cannot be read back as GGUF: {exc}") from exc
    found = dict(infos)
    want_names = set(expected) if expected is not None else set(expected_names or ())
    if set(found) != want_names:
        missing = sorted(want_names - set(found))[:5]
        extra = sorted(set(found) - want_names)[:5]
        raise VerificationError(f"{path}: tensor set differs (missing {missing}, extra {extra})")
    if len(infos) != len(want_names):
        raise VerificationError(f"{path}: {len(infos)} tensors, expected {len(want_names)}")
    for name, (shape, ttype) in (expected or {}).items():
        got_shape, got_type = found[name]
        # ggml drops trailing unit dimensions of the shape it stores
        if got_shape != shape and tuple(d for d in shape if d != 1) != tuple(
            d for d in got_shape if d != 1
        ):
            raise VerificationError(f"{name}: shape {got_shape}, expected {shape}")
        if got_type != ttype:
            raise VerificationError(f"{name}: type {got_type.name}, expected {ttype.name}")
    logger.info("read back %d tensors: names, shapes and types match", len(found))


def hf_token_ids(src: Path, texts: Sequence[str]) -> list[list[int]] | None:
    """Reference token ids (special tokens added) for ``texts``, or None if none can be made.

    From tokenizer.json with the ``tokenizers`` package; for a checkpoint with only a
    SentencePiece tokenizer.model, from ``sentencepiece`` (when installed) plus the BOS token
    that Hugging Face's SentencePiece tokenizers add (``add_bos_token``, default true).
    """
    path = src / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        return [tok.encode(t).ids for t in texts]
    model = src / "tokenizer.model"
    try:
        import sentencepiece
    except ImportError:
        return None
    if not model.is_file():
        return None
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    cfg_path = src / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    bos = [sp.bos_id()] if cfg.get("add_bos_token", True) and sp.bos_id() >= 0 else []
    eos = [sp.eos_id()] if cfg.get("add_eos_token", False) and sp.eos_id() >= 0 else []
    return [bos + sp.encode(t) + eos for t in texts]


@contextlib.contextmanager
def vocab_only_model(path: Path) -> Iterator[Any]:
    """The GGUF at ``path`` loaded by llama.cpp with its vocabulary only; freed on exit.

    Raises:
        VerificationError: llama.cpp cannot load the file.
    """
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise VerificationError(f"{path}: llama.cpp cannot load it")
    try:
        yield model
    finally:
        llama_cpp.llama_model_free(model)


def llama_token_ids(path: Path, texts: Sequence[str]) -> list[list[int]]:
    """Token ids llama.cpp gives for ``texts`` with the GGUF's vocabulary (special tokens added)."""
    import llama_cpp

    out = []
    with quiet_llama_log(), vocab_only_model(path) as model:
        vocab = llama_cpp.llama_model_get_vocab(model)
        for text in texts:
            data = text.encode("utf-8")
            cap = len(data) + 16
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, True, True)
            if n < 0:
                raise VerificationError(f"llama.cpp tokenization overflow on {text!r}")
            out.append(list(buf[:n]))
    return out


def check_tokenization(path: Path, src: Path, texts: Sequence[str] = SAMPLE_TEXTS) -> int:
    """Compare llama.cpp's tokenization of ``texts`` with the Hugging Face tokenizer's.

    Returns:
        The number of texts compared (0 when no reference tokenizer can be loaded).

    Raises:
        VerificationError: any text tokenizes differently.
    """
    want = hf_token_ids(src, texts)
    if want is None:
        logger.warning("no usable reference tokenizer in %s: tokenization not verified", src)
        return 0
    got = llama_token_ids(path, texts)
    bad = [(t, w, g) for t, w, g in zip(texts, want, got, strict=True) if w != g]
    if bad:
        text, w, g = bad[0]
        raise VerificationError(
            f"{len(bad)} of {len(texts)} texts tokenize differently from the HF tokenizer; "
            f"first: {text!r}: HF {w[:20]} vs llama.cpp {g[:20]}"
        )
    logger.info("tokenization of %d texts matches the HF tokenizer", len(texts))
    return len(texts)
