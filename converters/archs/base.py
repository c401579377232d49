"""What every architecture converter shares: hyperparameters to GGUF keys, tensor planning.

An architecture module subclasses :class:`ArchConverter`, names the Hugging Face architectures
it serves and the gguf-py ``MODEL_ARCH``, and overrides only what differs (extra metadata keys,
per-tensor transforms). Tensor names are mapped with gguf-py's own tables
(``gguf.get_tensor_name_map``), so no hand-written name lists live here.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, cast

import gguf
import numpy as np

from converters.checkpoint import Checkpoint, TensorRef, release_pages, to_f32
from converters.tokenizer import Vocab, load_vocab
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: its GGUF name, numpy shape, raw source type and a lazy loader.

    ``load()`` returns data in ``dtype`` (``"F32"``, ``"F16"`` or ``"BF16"`` as raw uint16 bits),
    shaped ``shape``; it may be a memory map, so nothing is read before it is written.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    load: Callable[[], np.ndarray]
    keep_f32: bool = False


def rope_parameters(cfg: dict[str, Any], layer_type: str = "full_attention") -> dict[str, Any]:
    """RoPE settings for one attention kind, from either config layout.

    transformers 5 writes ``rope_parameters`` (optionally nested per layer type); older configs
    write ``rope_theta`` next to a ``rope_scaling`` dict. Both are folded into one flat dict.
    """
    params = cfg.get("rope_parameters") or {}
    if layer_type in params or "full_attention" in params:
        params = params.get(layer_type) or params.get("full_attention") or {}
    merged: dict[str, Any] = dict(cfg.get("rope_scaling") or {})
    merged.update(params)
    for key in ("rope_theta", "partial_rotary_factor"):  # top level in pre-5 configs
        if key not in merged and cfg.get(key) is not None:
            merged[key] = cfg[key]
    if "rope_type" not in merged and "type" in merged:
        merged["rope_type"] = merged["type"]
    return merged


class ArchConverter:
    """Base converter: llama-style decoder hyperparameters and a 1:1 tensor mapping."""

    hf_architectures: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    #: Tensors in the checkpoint that llama.cpp does not use.
    skip_suffixes: ClassVar[tuple[str, ...]] = (".rotary_emb.inv_freq",)
    #: The LM head is always the tied token embedding (``lm_head.weight`` is dropped).
    always_tied: ClassVar[bool] = False
    #: llama.cpp requires ``output.weight`` even when the checkpoint ties it to the embedding;
    #: a tied checkpoint then gets a copy of ``token_embd.weight``.
    output_required: ClassVar[bool] = False
    #: ``quantization_config.quant_method`` values whose tensors this family repacks itself
    #: (any other pre-quantized checkpoint is refused).
    prequantized_methods: ClassVar[tuple[str, ...]] = ()
    #: Other spellings of config keys (GPT-2's ``n_layer``...): name used here -> config name,
    #: copied when the config lacks the name used here.
    config_aliases: ClassVar[dict[str, str]] = {}
    #: Config keys of a LayerNorm epsilon, first present wins; empty: the family uses RMSNorm.
    layer_norm_eps_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        cfg = dict(ckpt.config)
        if isinstance(cfg.get("text_config"), dict):
            cfg = {**cfg, **cfg["text_config"]}
        for key, alias in self.config_aliases.items():
            if cfg.get(key) is None and cfg.get(alias) is not None:
                cfg[key] = cfg[alias]
        self.cfg = cfg
        self.n_layers = int(self.require("num_hidden_layers"))
        self.n_head = int(self.require("num_attention_heads"))
        self.n_head_kv = int(cfg.get("num_key_value_heads") or self.n_head)
        self.n_embd = int(self.require("hidden_size"))
        self.head_dim = int(cfg.get("head_dim") or self.n_embd // self.n_head)
        self.tensor_map = gguf.get_tensor_name_map(self.gguf_arch, self.n_layers)
        self.arch_name = gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    @classmethod
    def for_checkpoint(cls, ckpt: Checkpoint) -> type[ArchConverter]:
        """The converter for this checkpoint: ``cls``, or a variant of the family that the
        checkpoint's files select (a reranker published under a causal-LM class name)."""
        return cls

    def load_vocab(self, src: Path, n_vocab: int, *, pre_tokenizer: str | None = None) -> Vocab:
        """The checkpoint's vocabulary (see :func:`converters.tokenizer.load_vocab`)."""
        return load_vocab(src, n_vocab, pre_tokenizer=pre_tokenizer)

    # --- hyperparameters --------------------------------------------------------------------

    @cached_property
    def rope(self) -> dict[str, Any]:
        """RoPE settings of full-attention layers (see :func:`rope_parameters`)."""
        return rope_parameters(self.cfg)

    def require(self, key: str) -> Any:
        """The config value ``key`` (or its alias); raises ConversionError naming it if absent."""
        if self.cfg.get(key) is None:
            alias = self.config_aliases.get(key)
            names = f"{alias!r} (or {key!r})" if alias else repr(key)
            raise ConversionError(f"config.json lacks {names}, which this architecture needs")
        return self.cfg[key]

    def check_activation(self, key: str, default: str, allowed: Iterable[str]) -> None:
        """Raise unless config ``key`` (``default`` when absent) names an activation in ``allowed``.

        Raises:
            ConversionError: the family's llama.cpp graph computes another activation.
        """
        act = str(self.cfg.get(key) or default)
        allowed = tuple(allowed)
        if act not in allowed:
            raise ConversionError(
                f"config.json {key}={act!r} is not supported for {self.arch_name} "
                f"(llama.cpp computes {'/'.join(allowed)})"
            )

    def add_metadata(self, w: gguf.GGUFWriter) -> None:
        """Write the architecture's hyperparameters (``{arch}.*`` keys)."""
        cfg = self.cfg
        w.add_block_count(self.n_layers)
        if cfg.get("max_position_embeddings"):
            w.add_context_length(int(cfg["max_position_embeddings"]))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(int(self.require("intermediate_size")))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        if self.layer_norm_eps_keys:
            eps = next((cfg[k] for k in self.layer_norm_eps_keys if cfg.get(k) is not None), 1e-5)
            w.add_layer_norm_eps(float(eps))
        else:
            w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        if cfg.get("head_dim"):
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        w.add_rope_dimension_count(self.rope_dims())
        if cfg.get("vocab_size"):
            w.add_vocab_size(int(cfg["vocab_size"]))
        self.add_rope_metadata(w, self.rope)

    def rope_dims(self) -> int:
        factor = float(self.rope.get("partial_rotary_factor", 1.0))
        return int(self.head_dim * factor)

    def add_rope_metadata(self, w: gguf.GGUFWriter, rope: dict[str, Any]) -> None:
        if rope.get("rope_theta") is not None:
            w.add_rope_freq_base(float(rope["rope_theta"]))
        rope_type = str(rope.get("rope_type") or "default").lower()
        factor = rope.get("factor")
        if rope_type == "linear" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(factor))
        elif rope_type == "yarn" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(factor))
            w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        elif rope_type not in ("default", "llama3", "longrope", "su"):
            raise ConversionError(f"RoPE type {rope_type!r} is not supported by this converter")

    # --- tensors ----------------------------------------------------------------------------

    def skip(self, hf_name: str) -> bool:
        """Whether a checkpoint tensor is dropped (unused by llama.cpp)."""
        if hf_name.endswith(self.skip_suffixes):
            return True
        # Tied embeddings: llama.cpp reuses token_embd when output.weight is absent.
        return hf_name == "lm_head.weight" and (
            self.always_tied or bool(self.cfg.get("tie_word_embeddings"))
        )

    def gguf_name(self, hf_name: str) -> str:
        name = self.tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConversionError(f"tensor {hf_name!r} has no GGUF name for {self.arch_name}")
        return name

    def tensor(self, hf_name: str, ref: TensorRef) -> Iterable[TensorPlan]:
        """Plan the output tensor(s) for one checkpoint tensor; override to transform."""
        yield self.passthrough(hf_name, ref)

    def passthrough(
        self,
        hf_name: str,
        ref: TensorRef,
        fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> TensorPlan:
        """Map ``ref`` 1:1, optionally through a shape-preserving data movement ``fn``."""
        name = self.gguf_name(hf_name)

        def load() -> np.ndarray:
            data = ref.load()
            return fn(data) if fn is not None else data

        return TensorPlan(name, ref.shape, ref.dtype, load, self.keeps_f32(name, ref.shape))

    def transposed(self, hf_name: str, ref: TensorRef) -> TensorPlan:
        """A 2-D tensor stored (in, out), as GPT-2's ``Conv1D`` stores it, written (out, in)."""
        name = self.gguf_name(hf_name)
        rows, cols = ref.shape
        return TensorPlan(name, (cols, rows), ref.dtype, lambda: ref.load().T, False)

    def shifted(self, hf_name: str, ref: TensorRef, shift: float) -> TensorPlan:
        """A tensor that needs arithmetic (``w + shift``): computed in float32, kept float32."""
        name = self.gguf_name(hf_name)
        return TensorPlan(
            name,
            ref.shape,
            "F32",
            lambda: to_f32(ref.load(), ref.dtype) + np.float32(shift),
            True,
        )

    @staticmethod
    def keeps_f32(gguf_name: str, shape: tuple[int, ...]) -> bool:
        """Norms, biases and 1-D tensors stay float32, as llama.cpp expects."""
        return len(shape) <= 1 or gguf_name.endswith(("_norm.weight", ".bias"))

    def extra_tensors(self) -> Iterable[TensorPlan]:
        """Tensors that llama.cpp needs but the checkpoint does not hold (e.g. RoPE factors)."""
        return ()

    def source_tensors(self) -> Mapping[str, TensorRef | StackedRef]:
        """The checkpoint's tensors as :meth:`tensor` sees them: per-expert MoE weights
        (``...experts.{e}.<name>``) arrive stacked, as one ``...experts.<name>`` tensor."""
        return stack_experts(self.ckpt.tensors)

    def plan(self) -> list[TensorPlan]:
        """Every output tensor, token embedding first, then block by block, then the head."""
        plans = list(self.extra_tensors())
        for hf_name, ref in self.source_tensors().items():
            if self.skip(hf_name):
                logger.debug("skipping %s", hf_name)
                continue
            # a StackedRef has TensorRef's interface (name, shape, dtype, load)
            plans.extend(self.tensor(hf_name, cast(TensorRef, ref)))
        if self.output_required and not any(p.name == "output.weight" for p in plans):
            embd = next((p for p in plans if p.name == "token_embd.weight"), None)
            if embd is not None:
                plans.append(TensorPlan("output.weight", embd.shape, embd.dtype, embd.load))
        dupes = {n for n, count in Counter(p.name for p in plans).items() if count > 1}
        if dupes:
            raise ConversionError(f"several checkpoint tensors map to {sorted(dupes)}")
        return sorted(plans, key=_order_key)


class StackedRef:
    """Same-shaped checkpoint tensors read as one ``(len(parts), *shape)`` tensor (MoE experts).

    Duck-types :class:`TensorRef` (``name``, ``shape``, ``dtype``, ``load()``). Nothing is read
    until used: ``load()`` returns a :class:`LazyStack`, which the writer reads row chunk by row
    chunk (each chunk touches one or two experts), so memory holds a chunk, not the stacked
    tensor; ``np.asarray`` of it builds the whole tensor for callers that transform it.
    """

    def __init__(self, name: str, parts: Sequence[TensorRef]) -> None:
        first = parts[0]
        for part in parts:
            if part.shape != first.shape or part.dtype != first.dtype:
                raise ConversionError(
                    f"cannot stack {part.name} {part.dtype}{list(part.shape)} with "
                    f"{first.name} {first.dtype}{list(first.shape)}"
                )
        self.name = name
        self.parts = tuple(parts)
        self.shape: tuple[int, ...] = (len(parts), *first.shape)
        self.dtype = first.dtype

    def load(self) -> np.ndarray:
        # LazyStack offers the ndarray API the writer uses (shape, ndim, reshape to rows,
        # row slices) and converts with np.asarray everywhere else.
        return cast(np.ndarray, LazyStack(self.parts, self.shape))


class LazyStack:
    """A stacked tensor that reads its parts only when rows are asked for."""

    def __init__(self, parts: Sequence[TensorRef], shape: tuple[int, ...]) -> None:
        self.parts = parts
        self.shape = shape
        self.ndim = len(shape)
        self._part_rows = int(np.prod(shape[1:-1], dtype=np.int64)) if len(shape) > 2 else 1

    def reshape(self, *shape: int) -> Any:
        cols = self.shape[-1]
        if tuple(shape) in ((-1, cols), (len(self.parts) * self._part_rows, cols)):
            return _StackedRows(self.parts, self._part_rows, cols)
        return np.asarray(self).reshape(*shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = _StackedRows(self.parts, self._part_rows, self.shape[-1])
        out = rows[0 : rows.shape[0]].reshape(self.shape)
        return out if dtype is None else out.astype(dtype)


class _StackedRows:
    """``(parts x rows, cols)`` view of a :class:`LazyStack`; a row slice maps only its parts.

    Slices inside one part are views of that part's memory map (no copy); once reading moves
    past a part, its mapped pages are dropped. Memory holds the rows in flight, not the tensor.
    """

    def __init__(self, parts: Sequence[TensorRef], part_rows: int, cols: int) -> None:
        self.parts = parts
        self.part_rows = part_rows
        self.shape = (len(parts) * part_rows, cols)
        self.ndim = 2
        self._mapped: dict[int, np.ndarray] = {}

    def _rows_of(self, p: int) -> np.ndarray:
        if p not in self._mapped:
            self._mapped[p] = self.parts[p].load().reshape(self.part_rows, self.shape[1])
        return self._mapped[p]

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.shape[0])
        if step != 1:
            raise IndexError("stacked rows are read in contiguous slices")
        first_part, last_part = start // self.part_rows, (stop - 1) // self.part_rows
        pieces = []
        for p in range(first_part, last_part + 1):
            base = p * self.part_rows
            pieces.append(self._rows_of(p)[max(start - base, 0) : min(stop - base, self.part_rows)])
        for done in [q for q in self._mapped if q < first_part]:
            release_pages(self._mapped.pop(done))
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.empty((0, self.shape[1]))


def derived_plan(
    name: str,
    shape: tuple[int, ...],
    source: TensorRef | StackedRef,
    fn: Callable[[np.ndarray], np.ndarray],
    *,
    keep_f32: bool = False,
) -> TensorPlan:
    """One output tensor cut from ``source`` by ``fn`` (a slice, a transpose): one of several
    outputs of a fused tensor. Lazy; loading it holds one output tensor, not the source."""

    def load() -> np.ndarray:
        data = np.asarray(source.load())
        out = np.ascontiguousarray(fn(data))
        release_pages(data)
        return out

    return TensorPlan(name, shape, source.dtype, load, keep_f32)


#: ``<head>.experts.<index>.<tail>``: one expert's tensor in a per-expert checkpoint layout.
_PER_EXPERT = re.compile(r"^(?P<head>.*\.experts)\.(?P<index>\d+)\.(?P<tail>.+)$")


def stack_experts(tensors: Mapping[str, TensorRef]) -> dict[str, TensorRef | StackedRef]:
    """Replace every group ``X.experts.{0..E-1}.T`` by one lazy :class:`StackedRef` ``X.experts.T``.

    Raises:
        ConversionError: a group misses an expert index or mixes shapes/types.
    """
    out: dict[str, TensorRef | StackedRef] = {}
    groups: dict[str, dict[int, TensorRef]] = {}
    for name, ref in tensors.items():
        m = _PER_EXPERT.match(name)
        if m is None:
            out[name] = ref
        else:
            groups.setdefault(f"{m['head']}.{m['tail']}", {})[int(m["index"])] = ref
    for merged, parts in groups.items():
        missing = sorted(set(range(max(parts) + 1)) - set(parts))
        if missing:
            raise ConversionError(f"{merged}: experts {missing} are missing from the checkpoint")
        out[merged] = StackedRef(merged, [parts[i] for i in range(len(parts))])
    return out


def _order_key(plan: TensorPlan) -> tuple[int, str]:
    if plan.name.startswith("blk."):
        return (1 + int(plan.name.split(".")[1]), plan.name)
    if plan.name.startswith(("token_embd", "rope")):
        return (0, plan.name)
    return (1 << 30, plan.name)


#: Activation names llama.cpp's ``LLM_FFN_GELU`` stands for. It computes the tanh form through
#: a float16 table; the exact ``gelu`` differs from it by up to 4.7e-4 absolute, which the
#: family tests bound (tests/converters/test_families_classic.py).
GELU_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def regroup_qkv(data: np.ndarray, n_head: int, n_head_kv: int, head_dim: int) -> np.ndarray:
    """Reorder a fused QKV projection stored per KV group into ``[all q | all k | all v]``.

    Falcon and GPTBigCode (without multi-query) store, for each of the ``n_head_kv`` groups, its
    ``n_head // n_head_kv`` query heads followed by one key and one value head; llama.cpp reads
    a fused QKV tensor as all query heads, then all key heads, then all value heads. Rows are
    moved, columns (and a bias's single axis) are kept.
    """
    per_group = n_head // n_head_kv
    grouped = data.reshape(n_head_kv, per_group + 2, head_dim, *data.shape[1:])
    q = grouped[:, :per_group].reshape(n_head * head_dim, *data.shape[1:])
    k = grouped[:, per_group].reshape(n_head_kv * head_dim, *data.shape[1:])
    v = grouped[:, per_group + 1].reshape(n_head_kv * head_dim, *data.shape[1:])
    return np.concatenate([q, k, v])


def f32_plan(name: str, values: Sequence[float] | np.ndarray) -> TensorPlan:
    """A small generated float32 tensor (RoPE factors and the like)."""
    arr = np.asarray(values, dtype=np.float32)
    return TensorPlan(name, arr.shape, "F32", lambda: arr, True)
