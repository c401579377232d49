"""Serving logic of Ollama's model endpoints: /api/tags, /api/show, /api/ps, /api/pull,
/api/delete, /api/copy, and what they report about a model (details, model_info, capabilities,
fill-in-the-middle tokens), read from the loaded engine or else from the GGUF file."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufworker import paths
from ggufworker.errors import InvalidRequestError, ModelNotFoundError
from ggufworker.server.models import ModelManager, ServedModel
from ggufworker.server.ollama_protocol import (
    ListModel,
    ListResponse,
    ModelDetails,
    ProcessModel,
    ProcessResponse,
    ShowResponse,
)

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
FOREVER = dt.timedelta(days=365 * 292)  # Ollama's "never expires" is about 292 years out


def iso(t: float | dt.datetime) -> str:
    """RFC 3339 time in UTC, as Ollama writes it."""
    when = t if isinstance(t, dt.datetime) else dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso(dt.datetime.now(dt.timezone.utc))


# --- what a model is --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What the Ollama endpoints report about one served model."""

    path: Path | None
    size: int
    modified: float
    digest: str
    metadata: dict[str, Any]  # GGUF scalars, typed
    template: str | None
    fim: tuple[int, int, int] | None


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


def known_path(manager: ModelManager, model: ServedModel) -> Path | None:
    """The model's GGUF file when it is on disk, without downloading anything."""
    if model.path is not None and model.path.is_file():
        return model.path
    source = Path(model.spec.source).expanduser()
    if source.is_file():
        return source
    entry = manager.registry_entry(model.spec.source)
    if entry is not None:
        from ggufworker.registry.cache import model_path

        path = model_path(_home(manager), entry)
        return path if path.is_file() else None
    return None


def _home(manager: ModelManager) -> Path:
    home = manager.settings.home
    return Path(home).expanduser() if home is not None else paths.home_dir()


def model_facts(manager: ModelManager, model: ServedModel) -> ModelFacts:
    """Facts of a served model: from its loaded engine, else from its file (read in a worker
    thread by the caller: the first read of a large vocabulary takes a second or two)."""
    from ggufworker.registry.cache import read_marker

    path = known_path(manager, model)
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


def _parameter_size(meta: dict[str, Any]) -> str:
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
        parameter_size=_parameter_size(facts.metadata),
        quantization_level=_quantization(facts.metadata),
    )


def capabilities(manager: ModelManager, name: str, facts: ModelFacts) -> list[str]:
    """Ollama's capability words for a served name, from the model's template and tokens."""
    from ggufworker.server.ollama_chat import template_features

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


def _served(manager: ModelManager) -> dict[str, ServedModel]:
    """One model per served name (a name may serve generation and embeddings)."""
    out: dict[str, ServedModel] = {}
    for model in manager.all_models():
        current = out.get(model.spec.name)
        if current is None or (current.state != "ready" and model.state == "ready"):
            out[model.spec.name] = model
    return out


# --- endpoints ------------------------------------------------------------------------------


async def list_models(manager: ModelManager) -> ListResponse:
    """/api/tags: every served model, loaded or not."""
    rows = []
    for name, model in _served(manager).items():
        facts = await asyncio.to_thread(model_facts, manager, model)
        rows.append(
            ListModel(
                name=name,
                model=name,
                modified_at=iso(facts.modified or dt.datetime.now(dt.timezone.utc)),
                size=facts.size,
                digest=facts.digest,
                details=details(facts),
            )
        )
    return ListResponse(models=rows)


async def show(manager: ModelManager, name: str, *, verbose: bool) -> ShowResponse:
    """/api/show: details, model_info, template, parameters and capabilities of a model."""
    try:
        model = manager.lookup(name)
    except ModelNotFoundError:
        model = manager.lookup(name, embedding=True)
    facts = await asyncio.to_thread(model_facts, manager, model)
    info = dict(facts.metadata)
    info.pop("general.file_type_name", None)
    template = facts.template or ""
    if facts.fim is not None:
        # how a request with `suffix` is laid out; clients (Continue) look for `.Suffix` here
        texts = [manager_piece(model, t) for t in facts.fim]
        template = (
            f"{{{{- if .Suffix }}}}{texts[0]}{{{{ .Prompt }}}}{texts[1]}{{{{ .Suffix }}}}"
            f"{texts[2]}{{{{- else }}}}{template}{{{{- end }}}}"
        )
    params = [f"num_ctx {manager.settings.ctx_size}"]
    return ShowResponse(
        license=str(info.get("general.license", "")),
        modelfile=f"# served by ggufworker\nFROM {facts.path or model.spec.source}\n",
        parameters="\n".join(params),
        template=template,
        details=details(facts),
        model_info=info,
        capabilities=capabilities(manager, model.spec.name, facts),
        modified_at=iso(facts.modified or dt.datetime.now(dt.timezone.utc)),
    )


def manager_piece(model: ServedModel, token: int) -> str:
    engine = model.engine if model.state == "ready" else None
    return engine.detokenize([token]) if engine is not None else f"<token {token}>"


def process_list(manager: ModelManager) -> ProcessResponse:
    """/api/ps: the loaded models, their size, context length and when they unload."""
    rows = []
    for name, model in _served(manager).items():
        if model.state != "ready" or model.engine is None:
            continue
        info = model.engine.info
        expires = manager.expires_at(model)
        if expires is None:
            when = iso(dt.datetime.now(dt.timezone.utc) + FOREVER)
        else:
            when = iso(expires)
        rows.append(
            ProcessModel(
                name=name,
                model=name,
                size=info.size_bytes,
                digest="",
                details=ModelDetails(
                    family=info.architecture,
                    families=[info.architecture],
                    parameter_size=_parameter_size(
                        {"general.parameter_count": info.n_params, **_label(info)}
                    ),
                    quantization_level=info.quantization,
                ),
                expires_at=when,
                size_vram=info.size_bytes if info.backend == "gpu" else 0,
                context_length=info.n_ctx,
            )
        )
    return ProcessResponse(models=rows)


def _label(info: Any) -> dict[str, Any]:
    label = info.metadata.get("general.size_label")
    return {"general.size_label": label} if label else {}


# --- pull, delete, copy ---------------------------------------------------------------------


def pull_target(manager: ModelManager, name: str) -> Any:
    """The registry cache target of a pull (registry name, name:tag alias or ``hf://`` ref).

    Raises:
        ModelNotFoundError: the name is not in the registry.
    """
    from ggufworker.registry import load_registry, resolve

    entry = manager.registry_entry(name)
    return resolve(entry.name if entry is not None else name, load_registry(), _home(manager))


def _work_bytes(home: Path, target: Path) -> int:
    """Bytes written so far by a download in progress (its work files)."""
    from ggufworker.registry.cache import staging_root

    total = 0
    staging = staging_root(home)
    candidates = list(staging.rglob("*")) if staging.is_dir() else []
    if target.parent.is_dir():
        candidates += [p for p in target.parent.glob(f".{target.name}*") if p != target]
    for path in candidates:
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


async def pull(manager: ModelManager, name: str, target: Any) -> AsyncIterator[dict[str, Any]]:
    """/api/pull's progress: {status, digest, total, completed} while bytes arrive, then
    ``success``; the pulled model is served from then on."""
    from ggufworker.registry import cached
    from ggufworker.registry import pull as registry_pull

    home = _home(manager)
    yield {"status": "pulling manifest"}
    digest = f"sha256:{target.sha256}" if target.sha256 else ""
    status = f"pulling {target.sha256[:12]}" if target.sha256 else f"pulling {target.name}"
    total = target.size
    path = await asyncio.to_thread(cached, target)
    if path is None:
        task = asyncio.create_task(
            asyncio.to_thread(
                registry_pull,
                target.name,
                home=home,
                offline=manager.settings.offline or None,
                progress=False,
            )
        )
        done = 0
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                seen = _work_bytes(home, target.path)
                done = max(done, min(seen, total) if total else seen)
                yield {"status": status, "digest": digest, "total": total, "completed": done}
        finally:
            if not task.done():
                # a client gone mid-pull: the download runs on in its thread and finishes
                logger.info("pull of %s continues without its client", target.name)
        path = task.result()
    size = path.stat().st_size
    yield {"status": status, "digest": digest, "total": size, "completed": size}
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    manager.add(target.name)
    yield {"status": "success"}


async def delete(manager: ModelManager, name: str) -> None:
    """/api/delete: remove a model's file from the cache (and stop serving a pulled one).

    Raises:
        ModelNotFoundError: the model is not in the cache.
        InvalidRequestError: a model served from a local file (never deleted), or in use.
    """
    from ggufworker.registry.cache import remove_cached

    try:
        served: ServedModel | None = manager.lookup(name)
    except ModelNotFoundError:
        served = None
    if served is not None and Path(served.spec.source).expanduser().is_file():
        raise InvalidRequestError(
            f"{name} is served from the local file {served.spec.source}; it is not deleted"
        )
    try:
        target = pull_target(manager, served.spec.source if served else name)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"model '{name}' not found") from exc
    if not target.path.is_file():
        raise ModelNotFoundError(f"model '{name}' not found")
    for model in manager.all_models():
        if model.spec.source in (target.name, name) or model is served:
            if model.active:
                raise InvalidRequestError(f"model '{name}' is in use; try again when idle")
            if model.spec.source not in manager.settings.served_models() + list(
                manager.settings.embedding_models
            ):
                await manager.remove(model)
            else:
                await manager.unload(model)
    await asyncio.to_thread(remove_cached, target.path)
    logger.info("deleted %s (%s)", name, target.path)


def copy(manager: ModelManager, source: str, destination: str) -> None:
    """/api/copy: serve ``source`` also under the name ``destination``."""
    manager.add_alias(destination, source)
