"""What the Ollama endpoints report about a served model: details, model_info (the GGUF's
metadata), capabilities and fill-in-the-middle tokens, read from the loaded engine or else from
the GGUF file (with gguf-py, cached while the file is unchanged)."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufworker.server.core.models import ModelManager, ServedModel
from ggufworker.server.ollama.protocol import ModelDetails

logger = logging.getLogger(__name__)

# Fill-in-the-middle token triples (prefix, suffix, middle), by model family's spelling
FIM_STYLES: tuple[tuple[str, str, str], ...] = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, Granite
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),  # CodeLlama (SentencePiece)
    ("<PRE>", "<SUF>", "<MID>"),
)
# llama.cpp's metadata keys for the same tokens (either spelling)
FIM_KEYS = tuple(
    tuple(f"tokenizer.ggml.{part}_token_id" for part in parts)
    for parts in (("fim_pre", "fim_suf", "fim_mid"), ("prefix", "suffix", "middle"))
)


def iso(t: float | dt.datetime) -> str:
    """RFC 3339 time in UTC, as Ollama writes it."""
    when = t if isinstance(t, dt.datetime) else dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso(dt.datetime.now(dt.timezone.utc))


# --- facts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What the Ollama endpoints report about one served model."""

    path: Path | None
    size: int
    modified: float
    digest: str
    metadata: dict[str, Any]  # GGUF scalars, typed
    template: str | None
    fim: tuple[int, ...] | None


def typed(value: str) -> Any:
    """A llama.cpp metadata string back to its JSON type (int, float, bool or text)."""
    if value in ("true", "false"):
        return value == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def fim_ids(
    metadata: dict[str, Any], lookup: Callable[[str], int | None]
) -> tuple[int, ...] | None:
    """The model's (prefix, suffix, middle) token ids, or None when it has no FIM tokens."""
    for keys in FIM_KEYS:
        ids = [metadata.get(k) for k in keys]
        if all(isinstance(i, int) and i >= 0 for i in ids):
            return tuple(ids)  # type: ignore[arg-type]
    for style in FIM_STYLES:
        found = [lookup(text) for text in style]
        if all(i is not None for i in found):
            return tuple(found)  # type: ignore[arg-type]
    return None


@functools.lru_cache(maxsize=32)
def _gguf_facts(path: str, _mtime_ns: int, _size: int) -> tuple[dict[str, Any], str | None, tuple]:
    """Scalars, chat template and FIM ids of a GGUF file (cached while the file is unchanged)."""
    import gguf

    reader = gguf.GGUFReader(path)
    meta: dict[str, Any] = {}
    tokens: list[str] = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            if key == "tokenizer.ggml.tokens":
                tokens = list(field.contents())
            continue
        meta[key] = field.contents()
    template = meta.pop("tokenizer.chat_template", None)
    index = {t: i for i, t in enumerate(tokens)}
    fim = fim_ids(meta, index.get) or ()
    return meta, template, fim


def _engine_fim(engine: Any, metadata: dict[str, Any]) -> tuple[int, ...] | None:
    def lookup(text: str) -> int | None:
        ids = engine.tokenize(text, add_special=False, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    return fim_ids(metadata, lookup)


def model_facts(manager: ModelManager, model: ServedModel) -> ModelFacts:
    """Facts of a served model: from its loaded engine, else from its file (read in a worker
    thread by the caller: the first read of a large vocabulary takes a second or two)."""
    from ggufworker.registry.cache import read_marker

    path = manager.file_on_disk(model)
    entry = manager.registry_entry(model.spec.source)
    size, modified, digest = 0, 0.0, ""
    if path is not None:
        st = path.stat()
        size, modified = st.st_size, st.st_mtime
        marker = read_marker(path)
        digest = marker.sha256 if marker is not None else ""
    elif entry is not None:
        size = entry.size or 0
    if not digest and entry is not None and entry.sha256:
        digest = entry.sha256
    engine = model.engine if model.state == "ready" else None
    if engine is not None:
        info = engine.info
        meta = {k: typed(v) for k, v in info.metadata.items()}
        meta.setdefault("general.parameter_count", info.n_params)
        return ModelFacts(
            path, size, modified, digest, meta, info.chat_template, _engine_fim(engine, meta)
        )
    if path is not None:
        st = path.stat()
        meta, template, fim = _gguf_facts(str(path), st.st_mtime_ns, st.st_size)
        return ModelFacts(path, size, modified, digest, dict(meta), template, fim or None)
    meta = {}
    if entry is not None:
        meta = {
            "general.architecture": entry.architecture,
            "general.file_type_name": entry.quantization,
        }
    return ModelFacts(None, size, modified, digest, meta, None, None)


def _quantization(meta: dict[str, Any]) -> str:
    if "general.file_type_name" in meta:
        return str(meta["general.file_type_name"])
    ftype = meta.get("general.file_type")
    if isinstance(ftype, int):
        import gguf

        try:
            return gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_").replace("ALL_", "")
        except ValueError:
            return str(ftype)
    return ""


def parameter_size(meta: dict[str, Any]) -> str:
    label = meta.get("general.size_label")
    if isinstance(label, str) and label:
        return label
    n = meta.get("general.parameter_count")
    if not isinstance(n, int) or n <= 0:
        return ""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}".replace(".0", "")
    return str(n)


def details(facts: ModelFacts) -> ModelDetails:
    family = str(facts.metadata.get("general.architecture", ""))
    return ModelDetails(
        family=family,
        families=[family] if family else None,
        parameter_size=parameter_size(facts.metadata),
        quantization_level=_quantization(facts.metadata),
    )


def capabilities(manager: ModelManager, name: str, facts: ModelFacts) -> list[str]:
    """Ollama's capability words for a served name, from the model's template and tokens."""
    from ggufworker.server.ollama.chat import template_features

    caps: list[str] = []
    served = {m.spec.embedding for m in manager.all_models() if m.spec.name == name}
    if False in served:
        caps.append("completion")
        caps += template_features(facts.template)
        if facts.fim is not None:
            caps.append("insert")
    if True in served:
        caps.append("embedding")
    return caps
