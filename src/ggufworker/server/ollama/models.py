"""Serving logic of Ollama's model endpoints: /api/tags, /api/show, /api/ps, /api/pull,
/api/delete and /api/copy (what they say about a model comes from :mod:`.ollama_facts`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ggufworker.errors import InvalidRequestError, ModelNotFoundError
from ggufworker.server.core.models import ModelManager, ServedModel
from ggufworker.server.ollama.facts import (
    capabilities,
    details,
    iso,
    model_facts,
    parameter_size,
)
from ggufworker.server.ollama.protocol import (
    ListModel,
    ListResponse,
    ModelDetails,
    ProcessModel,
    ProcessResponse,
    ShowResponse,
)

logger = logging.getLogger(__name__)

FOREVER = dt.timedelta(days=365 * 292)  # Ollama's "never expires" is about 292 years out


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
    # LoRA adapters (BASE:NAME): the base's row, its size plus the adapter's, parent the base
    for base, spec in manager.loras.items():
        row = next((r for r in rows if r.name == base), None)
        if row is not None:
            size = spec.path.stat().st_size if spec.path.is_file() else 0
            parent = row.details.model_copy(update={"parent_model": base})
            name = f"{base}:{spec.name}"
            rows.append(row.model_copy(update={
                "name": name, "model": name, "size": row.size + size, "details": parent,
            }))  # fmt: skip
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
                digest=_digest(model),
                details=ModelDetails(
                    family=info.architecture,
                    families=[info.architecture],
                    parameter_size=parameter_size(
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


def _digest(model: ServedModel) -> str:
    """The loaded file's sha256 as its cache marker records it ("" when unverified)."""
    from ggufworker.registry.cache import read_marker

    marker = read_marker(model.path) if model.path is not None else None
    return marker.sha256 if marker is not None else ""


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
    return resolve(entry.name if entry is not None else name, load_registry(), manager.home)


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

    home = manager.home
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
