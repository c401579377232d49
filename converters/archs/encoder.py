"""What embedding and reranking models share: pooling metadata and the encoder base converter.

A retrieval model's GGUF says how its per-token states become one vector (``{arch}.pooling_type``:
mean, CLS, last token, or rank for a classifier head) and whether that vector is L2-normalised.
Both come from the sentence-transformers folder files when the checkpoint has them
(``modules.json``, the Pooling module's ``config.json``, a ``Normalize`` module, ``Dense``
projection modules), else from the family's documented default.

gguf has no key for normalisation, so it is written as ``ggufworker.embedding.normalize``
(docs/CONVERTER.md, "Embedding and reranking models").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from converters.archs.base import ArchConverter
from converters.checkpoint import Checkpoint, TensorRef, read_json, read_safetensors_header
from ggufworker.errors import ConversionError

logger = logging.getLogger(__name__)

#: Our key for "outputs are L2-normalised" (gguf defines none).
NORMALIZE_KEY = "ggufworker.embedding.normalize"

# sentence-transformers Pooling config -> llama.cpp pooling. Both spellings: the boolean flags
# of sentence-transformers 2-4 and the single ``pooling_mode`` string of later versions.
_POOLING_FLAGS = {
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}
_POOLING_MODES = {
    "cls": gguf.PoolingType.CLS,
    "mean": gguf.PoolingType.MEAN,
    "lasttoken": gguf.PoolingType.LAST,
}
#: Pooling modes llama.cpp has no graph for.
_UNSUPPORTED_FLAGS = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)


@dataclass(frozen=True)
class DenseModule:
    """A sentence-transformers ``Dense`` projection applied after pooling."""

    path: str
    in_features: int
    out_features: int
    weight: TensorRef


@dataclass(frozen=True)
class SentenceTransformersInfo:
    """What a checkpoint's sentence-transformers modules say (all empty when it has none)."""

    pooling: gguf.PoolingType | None = None
    normalize: bool = False
    dense: list[DenseModule] = field(default_factory=list)
    has_modules: bool = False


def _pooling_from_config(path: Path) -> gguf.PoolingType:
    cfg = read_json(path)
    bad = [k for k in _UNSUPPORTED_FLAGS if cfg.get(k)]
    mode = cfg.get("pooling_mode")
    if bad or (mode is not None and mode not in _POOLING_MODES):
        raise ConversionError(
            f"{path}: pooling {bad or mode} is not supported by llama.cpp "
            "(it pools by mean, CLS token or last token)"
        )
    if mode is not None:
        return _POOLING_MODES[mode]
    chosen = [p for k, p in _POOLING_FLAGS.items() if cfg.get(k)]
    if len(chosen) != 1:
        raise ConversionError(f"{path}: expected exactly one pooling mode, found {len(chosen)}")
    if cfg.get("include_prompt") is False:
        logger.warning(
            "%s: include_prompt=false (prompt tokens excluded from pooling) is not represented "
            "in GGUF; llama.cpp pools over the whole input",
            path,
        )
    return chosen[0]


def _dense_module(src: Path, path: str) -> DenseModule:
    folder = src / path
    cfg = read_json(folder / "config.json")
    act = str(cfg.get("activation_function") or "torch.nn.modules.linear.Identity")
    if not act.endswith("Identity"):
        raise ConversionError(f"{folder}: Dense activation {act} is not supported (identity only)")
    if cfg.get("bias", True) is not False:
        raise ConversionError(f"{folder}: a Dense module with a bias is not supported by llama.cpp")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{folder}: Dense module has no .safetensors weights")
    refs = read_safetensors_header(files[0])
    weight = refs.get("linear.weight")
    if weight is None:
        raise ConversionError(f"{files[0]}: no linear.weight tensor")
    out_f, in_f = int(cfg["out_features"]), int(cfg["in_features"])
    if weight.shape != (out_f, in_f):
        raise ConversionError(f"{files[0]}: linear.weight is {list(weight.shape)}, config says "
                              f"{[out_f, in_f]}")  # fmt: skip
    return DenseModule(path, in_f, out_f, weight)


def sentence_transformers_info(src: Path) -> SentenceTransformersInfo:
    """Read ``modules.json`` and the modules it lists (pooling, Dense, Normalize).

    Raises:
        ConversionError: a module llama.cpp cannot compute (max pooling, a Dense with a bias or
            an activation...), or unreadable module files.
    """
    modules_path = src / "modules.json"
    if not modules_path.is_file():
        return SentenceTransformersInfo()
    pooling: gguf.PoolingType | None = None
    normalize = False
    dense: list[DenseModule] = []
    for mod in read_json(modules_path):
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        path = str(mod.get("path", ""))
        if kind == "Pooling":
            pooling = _pooling_from_config(src / path / "config.json")
        elif kind == "Normalize":
            normalize = True
        elif kind == "Dense":
            if pooling is None:
                raise ConversionError(f"{modules_path}: a Dense module before pooling")
            dense.append(_dense_module(src, path))
        elif kind not in ("Transformer", "StaticEmbedding") or path:
            # Transformer is the checkpoint itself (path ""); anything else changes outputs
            raise ConversionError(f"{modules_path}: module {kind!r} ({path}) is not supported")
    return SentenceTransformersInfo(pooling, normalize, dense, True)


class EncoderConverter(ArchConverter):
    """Base of embedding/reranking converters: pooling, normalisation, non-causal attention.

    Subclasses set ``default_pooling`` (the family's documented pooling when the checkpoint has
    no sentence-transformers Pooling module) and ``causal`` (False for bidirectional encoders).
    """

    default_pooling: gguf.PoolingType = gguf.PoolingType.MEAN
    causal: bool = False

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        self.st = sentence_transformers_info(ckpt.dir)

    @property
    def pooling(self) -> gguf.PoolingType:
        """The pooling written: the sentence-transformers module's, else the family default."""
        return self.st.pooling if self.st.pooling is not None else self.default_pooling

    def add_pooling_metadata(self, w: gguf.GGUFWriter) -> None:
        """``{arch}.pooling_type``, ``{arch}.attention.causal`` and our normalisation flag."""
        w.add_pooling_type(self.pooling)
        if not self.causal:
            w.add_causal_attention(False)
        w.add_bool(NORMALIZE_KEY, self.st.normalize)
        logger.info("pooling %s, normalize %s", self.pooling.name, self.st.normalize)


def name_hints(ckpt: Checkpoint) -> list[str]:
    """Lower-case names a checkpoint goes by (folder, ``_name_or_path``), for role detection."""
    hints = [ckpt.dir.resolve().name, str(ckpt.config.get("_name_or_path") or "")]
    return [h.lower() for h in hints if h]
