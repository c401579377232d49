"""Where a base family's tensor plan sends each element of a weight: the index probes behind
:mod:`converters.lora`.

The base's converter (converters/archs/) is given fake checkpoint tensors holding each element's
row number, column number (and expert number), and zeros; when every output of its plan is a
pure gather of rows and columns (or of the transpose), the same gather applied to a LoRA pair's
``B`` rows and ``A`` columns gives the delta of the planned tensor exactly. The base is a
checkpoint folder, or a GGUF whose metadata rebuilds the family's converter.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from converters.archs import CONVERTERS, get_converter
from converters.archs.base import ArchConverter, TensorPlan
from converters.checkpoint import Checkpoint, TensorRef, to_f32
from ggufworker.errors import ConversionError


class GgufBaseConfig:
    """A stand-in for :class:`Checkpoint` made from a GGUF base's metadata (no tensors)."""

    def __init__(self, path: Path, reader: gguf.GGUFReader, prefer: str | None = None) -> None:
        self.dir = path.parent
        self.tensors: dict[str, TensorRef] = {}
        arch = gguf_field(reader, "general.architecture")
        if not isinstance(arch, str):
            raise ConversionError(f"{path}: no general.architecture")
        self.arch = arch
        names = [n for n, cls in CONVERTERS.items() if gguf.MODEL_ARCH_NAMES[cls.gguf_arch] == arch]
        if not names:
            raise ConversionError(f"{path}: no converter family writes architecture {arch!r}")
        keys = {
            "num_hidden_layers": "block_count", "num_attention_heads": "attention.head_count",
            "num_key_value_heads": "attention.head_count_kv", "hidden_size": "embedding_length",
            "intermediate_size": "feed_forward_length", "head_dim": "attention.key_length",
            "vocab_size": "vocab_size", "max_position_embeddings": "context_length",
            "num_experts": "expert_count", "num_experts_per_tok": "expert_used_count",
            "num_local_experts": "expert_count",
        }  # fmt: skip
        # several HF families write one GGUF architecture (Mixtral and Mistral write llama):
        # the adapter's own base class picks among them
        config: dict[str, Any] = {"architectures": [prefer if prefer in names else names[0]]}
        for hf_key, key in keys.items():
            value = gguf_field(reader, f"{arch}.{key}")
            if isinstance(value, (int, float)):
                config[hf_key] = int(value)
        self.config = config


def gguf_field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    return None if f is None else f.contents()


@dataclass(frozen=True)
class BasePlan:
    conv: ArchConverter
    #: HF tensor name -> shape, where known (a checkpoint folder); None for a GGUF base
    hf_shapes: dict[str, tuple[int, ...]] | None
    #: GGUF tensor name -> numpy shape, where known (a GGUF base)
    gguf_shapes: dict[str, tuple[int, ...]] | None
    vocab_size: int | None


def load_base(base: str | os.PathLike[str], prefer: str | None = None) -> BasePlan:
    path = Path(base)
    if path.is_dir():
        ckpt = Checkpoint(path)
        conv = get_converter(ckpt.architecture).for_checkpoint(ckpt)(ckpt)
        shapes = {name: tuple(ref.shape) for name, ref in conv.source_tensors().items()}
        vocab = conv.cfg.get("vocab_size")
        return BasePlan(conv, shapes, None, int(vocab) if vocab else None)
    if not path.is_file():
        raise ConversionError(f"base {path} is neither a checkpoint folder nor a GGUF file")
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"base {path}: not a readable GGUF file ({exc})") from exc
    stub = GgufBaseConfig(path, reader, prefer)
    try:
        conv = get_converter(stub.config["architectures"][0])(stub)  # type: ignore[arg-type]
    except (ConversionError, KeyError, TypeError, ValueError) as exc:
        raise ConversionError(
            f"base {path}: cannot rebuild the {stub.arch} tensor plan from GGUF metadata "
            f"({exc}); pass the base's checkpoint folder instead"
        ) from exc
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    embd = shapes.get("token_embd.weight")
    return BasePlan(conv, None, shapes, embd[0] if embd else None)


class Probe:
    """A fake checkpoint tensor whose data is an index probe (see the module docstring)."""

    def __init__(self, name: str, shape: tuple[int, ...], make: Callable[[], np.ndarray]):
        self.name = name
        self.shape = shape
        self.dtype = "F32"
        self._make = make

    def load(self) -> np.ndarray:
        return self._make()


@dataclass(frozen=True)
class Gather:
    """``out[i, j] = src[rows[i], cols[j]]`` (or ``src[cols[j], rows[i]]`` when transposed)."""

    name: str
    rows: np.ndarray
    cols: np.ndarray
    transposed: bool


def gathers(conv: ArchConverter, hf_name: str, shape: tuple[int, int]) -> list[Gather]:
    """How the family's plan turns the 2-D weight ``hf_name`` into GGUF tensors, as gathers.

    Raises:
        ConversionError: an output is not a pure gather of the weight's elements.
    """
    n_rows, n_cols = shape

    def run(fill: Callable[[], np.ndarray]) -> list[TensorPlan]:
        plans = list(conv.tensor(hf_name, Probe(hf_name, shape, fill)))  # type: ignore[arg-type]
        return plans

    def rows() -> np.ndarray:
        return np.repeat(np.arange(n_rows, dtype=np.float32)[:, None], n_cols, axis=1)

    def cols() -> np.ndarray:
        return np.repeat(np.arange(n_cols, dtype=np.float32)[None, :], n_rows, axis=0)

    def zeros() -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    try:
        by_rows, by_cols, by_zero = run(rows), run(cols), run(zeros)
    except ConversionError:
        raise
    except Exception as exc:  # a plan that needs more than the weight (sibling tensors...)
        raise ConversionError(f"{hf_name}: the base's tensor plan is not a plain mapping") from exc
    out = []
    for pr, pc, pz in zip(by_rows, by_cols, by_zero, strict=True):
        r = to_f32(np.asarray(pr.load()), pr.dtype)
        c = to_f32(np.asarray(pc.load()), pc.dtype)
        z = to_f32(np.asarray(pz.load()), pz.dtype)
        gather = as_gather(pr.name, r, c, z, shape)
        if gather is None:
            raise ConversionError(
                f"{hf_name} -> {pr.name}: the family's conversion of this weight is not a "
                "row/column reordering, so a LoRA on it has no exact llama.cpp form"
            )
        out.append(gather)
    return out


def as_gather(
    name: str, r: np.ndarray, c: np.ndarray, z: np.ndarray, shape: tuple[int, int]
) -> Gather | None:
    if r.ndim != 2 or r.shape != c.shape or r.shape != z.shape or np.any(z != 0):
        return None
    if np.any(r != np.round(r)) or np.any(c != np.round(c)):
        return None
    if (r == r[:, :1]).all() and (c == c[:1, :]).all():
        rows, cols, transposed = r[:, 0], c[0], False
    elif (r == r[:1, :]).all() and (c == c[:, :1]).all():
        rows, cols, transposed = c[:, 0], r[0], True
    else:
        return None
    bound_rows, bound_cols = (shape[1], shape[0]) if transposed else shape
    rows_i, cols_i = rows.astype(np.int64), cols.astype(np.int64)
    if rows_i.min() < 0 or rows_i.max() >= bound_rows or cols_i.min() < 0:
        return None
    if cols_i.max() >= bound_cols:
        return None
    return Gather(name, rows_i, cols_i, transposed)


def expert_gathers(
    conv: ArchConverter, hf_name: str, shape: tuple[int, ...]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The family's plan for the stacked expert tensor ``hf_name`` (E, out, in), as per-output
    (GGUF name, row gather, column gather), the same for every expert, experts in order.

    Raises:
        ConversionError: an output is not such a gather.
    """
    n_exp, n_rows, n_cols = shape

    def axis(values: np.ndarray, ax: int) -> Callable[[], np.ndarray]:
        view = [1, 1, 1]
        view[ax] = len(values)
        return lambda: np.broadcast_to(values.reshape(view), shape).astype(np.float32)

    probes = [
        axis(np.arange(n_exp, dtype=np.float32), 0),
        axis(np.arange(n_rows, dtype=np.float32), 1),
        axis(np.arange(n_cols, dtype=np.float32), 2),
        lambda: np.zeros(shape, dtype=np.float32),
    ]
    try:
        runs = [list(conv.tensor(hf_name, Probe(hf_name, shape, p))) for p in probes]  # type: ignore[arg-type]
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"{hf_name}: the base's tensor plan is not a plain mapping") from exc
    out = []
    for plans in zip(*runs, strict=True):
        ex, r, c, z = (to_f32(np.asarray(p.load()), p.dtype) for p in plans)
        name = plans[0].name
        ok = ex.ndim == 3 and ex.shape[0] == n_exp and not np.any(z)
        ok = ok and bool((ex == np.arange(n_exp, dtype=np.float32)[:, None, None]).all())
        ok = ok and bool((r == r[:1, :, :1]).all()) and bool((c == c[:1, :1, :]).all())
        if not ok:
            raise ConversionError(
                f"{hf_name} -> {name}: the family's conversion of these experts is not a "
                "row/column reordering, so a LoRA on them has no exact llama.cpp form"
            )
        rows, cols = r[0, :, 0].astype(np.int64), c[0, 0, :].astype(np.int64)
        if rows.max() >= n_rows or cols.max() >= n_cols or np.any(rows != r[0, :, 0]):
            raise ConversionError(f"{hf_name} -> {name}: not a reordering of the experts' rows")
        out.append((name, rows, cols))
    return out


__all__ = ["BasePlan", "Gather", "Probe", "expert_gathers", "gathers", "load_base"]
