"""Output types: numpy encodings via gguf-py, K-quants via llama.cpp's own quantizer.

F32, F16, BF16, Q8_0 and Q4_0 are produced while streaming, chunk by chunk. Everything else
(Q4_K_M, Q5_K_M, Q6_K, ...) is made by ``llama_model_quantize`` from an intermediate GGUF in
the source precision, so the K-quant code that llama.cpp ships (and its per-tensor type mixes)
is used rather than reimplemented.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np

from converters.checkpoint import to_f32
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)

QT = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

#: outtype name -> (tensor type, file type) for types written directly.
NUMPY_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (QT.F32, FT.ALL_F32),
    "f16": (QT.F16, FT.MOSTLY_F16),
    "bf16": (QT.BF16, FT.MOSTLY_BF16),
    "q8_0": (QT.Q8_0, FT.MOSTLY_Q8_0),
    "q4_0": (QT.Q4_0, FT.MOSTLY_Q4_0),
}

#: outtype name -> llama.cpp file type, for types made by llama_model_quantize.
LLAMA_TYPES: dict[str, gguf.LlamaFileType] = {
    name: FT.__members__["MOSTLY_" + name.upper()]
    for name in (
        "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l",
        "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
    )
}  # fmt: skip

SOURCE_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}

#: plan dtype -> GGML type, for data a checkpoint already holds in that type's block layout
#: (GPT-OSS's MXFP4 experts): written as is, whatever the outtype.
RAW_TYPES: dict[str, gguf.GGMLQuantizationType] = {"MXFP4": QT.MXFP4}

OUTTYPES = ("auto", *NUMPY_TYPES, *LLAMA_TYPES)


def resolve_outtype(outtype: str, source_type: str) -> str:
    """Normalise an outtype name; ``auto`` becomes the checkpoint's own float type.

    Raises:
        ConversionError: unknown type name.
    """
    name = outtype.lower()
    if name == "auto":
        return SOURCE_TYPES.get(source_type, "f32")
    if name not in NUMPY_TYPES and name not in LLAMA_TYPES:
        raise ConversionError(f"unknown outtype {outtype!r}; choose one of: {', '.join(OUTTYPES)}")
    return name


def tensor_type(
    qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...], keep_f32: bool
) -> gguf.GGMLQuantizationType:
    """The type one tensor is stored as: F32 for norms/1-D, F16 where a block type does not fit."""
    if keep_f32:
        return QT.F32
    if qtype in (QT.Q8_0, QT.Q4_0):
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if shape[-1] % block:
            logger.warning("row size %d is not a multiple of %d: storing F16", shape[-1], block)
            return QT.F16
    return qtype


def stored_nbytes(qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    """Bytes one tensor takes in the file."""
    return int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype), dtype=np.int64))


def encode(raw: np.ndarray, src_dtype: str, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Encode a chunk of rows (raw source data) as ``qtype`` bytes/values ready to write.

    bf16 -> bf16 copies the bits untouched; other conversions go through float32.
    """
    if src_dtype in RAW_TYPES:  # already encoded blocks
        return np.ascontiguousarray(raw, dtype=np.uint8)
    if qtype == QT.BF16 and src_dtype == "BF16":
        return np.ascontiguousarray(raw, dtype=np.uint16)
    if qtype == QT.F16 and src_dtype == "F16":
        return np.ascontiguousarray(raw, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(to_f32(raw, src_dtype)), qtype)


@contextlib.contextmanager
def quiet_llama_log() -> Iterator[None]:
    """Silence llama.cpp's INFO log while inside (llama-cpp-python prints it unless its
    logger is above INFO); restores the previous level."""
    log = logging.getLogger("llama-cpp-python")
    old = log.level
    if not logger.isEnabledFor(logging.DEBUG):
        log.setLevel(max(old, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(old)


def llama_quantize(src: Path, dst: Path, outtype: str, *, nthread: int = 0) -> None:
    """Quantize ``src`` (a GGUF) into ``dst`` with llama.cpp's ``llama_model_quantize``.

    Raises:
        ConversionError: llama-cpp-python is missing or llama.cpp reports a failure.
    """
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConversionError(f"outtype {outtype} needs llama-cpp-python: {exc}") from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(LLAMA_TYPES[outtype])
    params.nthread = nthread
    logger.info("quantizing to %s with llama.cpp", outtype)
    with quiet_llama_log():
        rc = llama_cpp.llama_model_quantize(
            str(src).encode(), str(dst).encode(), ctypes.byref(params)
        )
    if rc != 0:
        raise ConversionError(f"llama.cpp quantization to {outtype} failed (code {rc})")
