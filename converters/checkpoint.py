"""Read a Hugging Face checkpoint folder without torch: config, tensor index, memory-mapped data.

SafeTensors files are a little-endian JSON header followed by raw tensor bytes. Reading the
header ourselves lets every tensor be mapped on its own (``np.memmap`` over just its byte
range), so pages are released as soon as a tensor has been written and peak memory stays
bounded by the largest tensor, not the model. numpy has no bfloat16: bf16 tensors come back as
raw ``uint16`` bits and are only widened where arithmetic is needed.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)

# SafeTensors dtype -> numpy dtype used for the raw bytes
_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}

FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: file, absolute byte offset, shape and stored type."""

    name: str
    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: str  # SafeTensors dtype name: F32, F16, BF16, ...

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _DTYPES[self.dtype].itemsize

    def load(self) -> np.ndarray:
        """Map the tensor's bytes read-only (bf16 as raw uint16); nothing is read until used."""
        np_dtype = _DTYPES[self.dtype]
        if self.nbytes == 0:
            return np.empty(self.shape, dtype=np_dtype)
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = self.nbytes // np_dtype.itemsize
        arr = np.frombuffer(mm, dtype=np_dtype, count=count, offset=self.offset)
        return arr.reshape(self.shape)


def release_pages(arr: np.ndarray) -> None:
    """Drop the already-read pages of a tensor mapped by :meth:`TensorRef.load` from memory.

    Mapped file pages count towards the process's resident memory until unmapped; dropping
    them after each written chunk keeps peak memory near one chunk even for huge embeddings
    (the data stays in the OS page cache, so nothing is read twice).
    """
    base: object = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def read_json(path: Path, *, missing: str | None = None) -> Any:
    """A JSON file of a checkpoint folder.

    Args:
        missing: when given, a missing file is "FOLDER: no NAME (MISSING)"; otherwise it is
            reported like an unreadable one.

    Raises:
        ConversionError: the file is missing, unreadable or not JSON.
    """
    if missing is not None and not path.is_file():
        raise ConversionError(f"{path.parent}: no {path.name} ({missing})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path}: cannot read: {exc}") from exc


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse one .safetensors header into tensor references.

    Raises:
        ConversionError: the file is truncated or its header is not valid SafeTensors.
    """
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ConversionError(f"{path}: not a SafeTensors file (too short)")
            (header_len,) = struct.unpack("<Q", raw_len)
            size = path.stat().st_size
            if header_len > size - 8:
                raise ConversionError(f"{path}: SafeTensors header length exceeds the file size")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read SafeTensors header: {exc}") from exc
    base = 8 + header_len
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        start, end = info["data_offsets"]
        ref = TensorRef(name, path, base + int(start), tuple(int(d) for d in info["shape"]), dtype)
        if end - start != ref.nbytes or base + end > size:
            raise ConversionError(f"{path}: tensor {name!r} has inconsistent offsets (truncated?)")
        refs[name] = ref
    return refs


class Checkpoint:
    """A Hugging Face checkpoint folder: config.json plus single or sharded SafeTensors."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise ConversionError(f"{self.dir}: not a directory")
        self.config: dict[str, Any] = read_json(
            self.dir / "config.json", missing="not a Hugging Face checkpoint?"
        )
        self.files, weight_map = self._find_files()
        self.tensors: dict[str, TensorRef] = {}
        for path in self.files:
            for name, ref in read_safetensors_header(path).items():
                if name in self.tensors:
                    raise ConversionError(f"tensor {name!r} appears in more than one shard")
                self.tensors[name] = ref
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self.tensors))
            if missing:
                raise ConversionError(
                    f"tensors listed in the index but absent from shards: {missing[:5]}"
                )

    def _find_files(self) -> tuple[list[Path], dict[str, str] | None]:
        """The SafeTensors files to read and, when there is an index, its weight map."""
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError) as exc:
                raise ConversionError(f"{index}: invalid index: {exc}") from exc
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (self.dir / n).is_file()]
            if missing:
                raise ConversionError(
                    f"{self.dir}: shards listed in the index are missing: {missing}"
                )
            return [self.dir / n for n in names], weight_map
        files = sorted(self.dir.glob("*.safetensors"))
        # Mistral repositories ship their own-format consolidated.safetensors beside the HF
        # shards; it holds the same weights under other names.
        hf_files = [f for f in files if not f.name.startswith("consolidated")]
        files = hf_files or files
        if not files:
            raise ConversionError(f"{self.dir}: no *.safetensors files")
        return files, None

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        if not archs:
            raise ConversionError("config.json has no 'architectures' entry")
        return str(archs[0])

    def source_float_type(self) -> str:
        """The dominant float type of the 2-D weights (F32, F16 or BF16), for ``outtype=auto``."""
        counts: dict[str, int] = {}
        for ref in self.tensors.values():
            if len(ref.shape) >= 2 and ref.dtype in FLOAT_TYPES:
                counts[ref.dtype] = counts.get(ref.dtype, 0) + ref.nbytes
        if not counts:
            return "F32"
        best = max(counts, key=lambda k: counts[k])
        return "F32" if best == "F64" else best


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen raw tensor data to float32 (bf16 bits shifted into the high half of a float32)."""
    if dtype == "BF16":
        return np.left_shift(np.asarray(raw, dtype=np.uint16), 16, dtype=np.uint32).view(np.float32)
    return np.asarray(raw, dtype=np.float32)
