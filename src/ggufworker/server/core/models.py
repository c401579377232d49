"""The served models: load on first use, unload after an idle timeout, pin some resident.

Like Ollama's keep_alive: a model that no request has used for ``keep_alive`` seconds is
closed (its memory returned); the next request loads it again. Pinned models load at start
and stay. Loading and closing run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ggufworker.config import ServerSettings
from ggufworker.errors import (
    GGUFWorkerError,
    ModelLoadError,
    ModelNotFoundError,
    RpcWorkerUnavailableError,
    WrongModelKindError,
)
from ggufworker.registry.schema import LATEST_TAG
from ggufworker.server.core.loading import load_engine, resolve_source
from ggufworker.server.lora.table import AdapterSpec, LoraTable, model_id

logger = logging.getLogger(__name__)

State = Literal["unloaded", "loading", "ready", "failed"]


@dataclass(frozen=True)
class ModelSpec:
    """One model the server may serve."""

    name: str
    source: str
    embedding: bool = False
    pinned: bool = False


EngineFactory = Callable[[Path, ModelSpec, ServerSettings], Any]
Resolver = Callable[[str, ServerSettings], Path]


def served_name(source: str) -> str:
    """Clients' name for a model: the registry name, or the file stem of a path."""
    if source.endswith(".gguf") or "/" in source or Path(source).is_file():
        return Path(source.rstrip("/")).stem
    return source


@dataclass
class ServedModel:
    spec: ModelSpec
    engine: Any = None
    state: State = "unloaded"
    error: str | None = None
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # a request's keep_alive (Ollama API) overrides the server's: seconds, negative forever
    keep_alive: float | None = None
    path: Path | None = None  # the GGUF file, once resolved

    def idle_timeout(self, default: float) -> float:
        """Seconds this model may stay loaded while idle (negative: forever)."""
        return default if self.keep_alive is None else self.keep_alive


class Lease:
    """A request's hold on a loaded model; the model is not unloaded while leases are out."""

    def __init__(self, model: ServedModel) -> None:
        self._model = model
        self.engine = model.engine
        self.name = model.spec.name
        self._released = False
        # a LoRA adapter model id (BASE:NAME): the adapter and scale its requests run under
        self.lora: tuple[tuple[str, float], ...] | None = None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._model.active -= 1
            self._model.last_used = time.monotonic()


class ModelManager:
    """Owns every engine of the server. Create in the app's lifespan; call :meth:`start`,
    then :meth:`close` at shutdown."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        engine_factory: EngineFactory = load_engine,
        resolver: Resolver = resolve_source,
    ) -> None:
        self.settings = settings
        self._factory = engine_factory
        self._resolver = resolver
        pinned = set(settings.pin)
        self._generation: dict[str, ServedModel] = {}
        self._embedding: dict[str, ServedModel] = {}
        for source in settings.served_models():
            name = served_name(source)
            self._generation[name] = ServedModel(
                ModelSpec(name, source, pinned=name in pinned or source in pinned)
            )
        for source in settings.embedding_models:
            name = served_name(source)
            self._embedding[name] = ServedModel(
                ModelSpec(name, source, embedding=True, pinned=name in pinned or source in pinned)
            )
        self._aliases: dict[str, str] = {}  # name -> served name (Ollama's /api/copy)
        # --- LoRA adapters (server/lora/): served as model ids BASE:NAME ---
        self.loras = LoraTable.from_settings(settings.loras, next(iter(self._generation), None))
        self._registry: Any = None
        self.startup_done = asyncio.Event()
        self.startup_error: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.on_ready: list[Callable[[ServedModel], Any]] = []

    # --- lookup ----------------------------------------------------------------------------

    def all_models(self) -> list[ServedModel]:
        return [*self._generation.values(), *self._embedding.values()]

    def lookup(self, name: str | None, *, embedding: bool = False) -> ServedModel:
        """The served model a request names (None: the first one).

        Raises:
            ModelNotFoundError: no such model is served for this kind of request.
        """
        table = self._embedding if embedding else self._generation
        if name is None:
            if not table:
                kind = "embedding" if embedding else "generation"
                raise ModelNotFoundError(f"no {kind} model is served")
            return next(iter(table.values()))
        model = next((table[n] for n in self.name_candidates(name) if n in table), None)
        adapter = None if model is not None or embedding else self.adapter_of(name)
        if adapter is not None:  # a LoRA adapter's id BASE:NAME: its base serves it
            return self._generation[adapter[0]]
        if model is None:
            other = self._generation if embedding else self._embedding
            if any(n in other for n in self.name_candidates(name)):
                raise WrongModelKindError(
                    f"model {name!r} is served for generation only; it makes no embeddings"
                    if embedding
                    else f"model {name!r} is an embedding model; it does not generate text"
                )
            kind = "an embedding model" if embedding else "a generation model"
            served = ", ".join(table) or "none"
            raise ModelNotFoundError(f"model {name!r} is not served as {kind} (served: {served})")
        return model

    def adapter_of(self, name: str | None) -> tuple[str, AdapterSpec] | None:
        """(base, adapter) when ``name`` is a LoRA adapter's model id and no served name."""
        if not name or not self.loras.items():
            return None
        if any(n in self._generation for n in self.name_candidates(name)):
            return None
        found = self.loras.find(name)
        return found if found is not None and found[0] in self._generation else None

    def name_candidates(self, name: str) -> list[str]:
        """The served names a client's model name may mean, best first: the name itself, its
        file stem, an alias made by :meth:`add_alias`, the registry model it names (registry
        aliases such as ``smollm2:135m``, and ``:latest`` tags, resolve here for every API)."""
        out = [name, served_name(name), name.removesuffix(LATEST_TAG)]
        out += [self._aliases[n] for n in list(out) if n in self._aliases]
        entry = self.registry_entry(name)
        if entry is not None:
            out.append(entry.name)
        return list(dict.fromkeys(out))

    @property
    def home(self) -> Path:
        """The ggufworker home the server reads and writes (models, state)."""
        from ggufworker import paths

        home = self.settings.home
        return Path(home).expanduser() if home is not None else paths.home_dir()

    def file_on_disk(self, model: ServedModel) -> Path | None:
        """The model's GGUF file when it is on disk (nothing is downloaded to find out)."""
        if model.path is not None and model.path.is_file():
            return model.path
        source = Path(model.spec.source).expanduser()
        if source.is_file():
            return source
        entry = self.registry_entry(model.spec.source)
        if entry is not None:
            from ggufworker.registry.cache import model_path

            path = model_path(self.home, entry)
            return path if path.is_file() else None
        return None

    def registry_entry(self, name: str) -> Any:
        """The registry model a name means (name, alias or name:latest), or None."""
        if "/" in name or name.endswith(".gguf"):
            return None
        if self._registry is None:
            from ggufworker.registry import load_registry

            try:
                self._registry = load_registry()  # read once: it does not change while serving
            except GGUFWorkerError as exc:  # a broken models.yaml must not break lookups
                logger.warning("registry unavailable for name lookup: %s", exc)
                return None
        return self._registry.get(name)

    def add_alias(self, alias: str, name: str) -> ServedModel:
        """Serve the model ``name`` also as ``alias`` (until the server stops).

        Raises:
            ModelNotFoundError: ``name`` is not served.
        """
        model = self.lookup(name)
        self._aliases[alias] = model.spec.name
        return model

    def add(self, source: str) -> ServedModel:
        """Serve one more generation model (e.g. one just pulled); a served one is returned."""
        name = served_name(source)
        if name not in self._generation:
            self._generation[name] = ServedModel(ModelSpec(name, source))
        return self._generation[name]

    async def remove(self, model: ServedModel) -> None:
        """Stop serving ``model``: unload it and forget its name and aliases."""
        await self.unload(model)
        for table in (self._generation, self._embedding):
            if table.get(model.spec.name) is model:
                del table[model.spec.name]
        self._aliases = {a: n for a, n in self._aliases.items() if n != model.spec.name}

    def expires_at(self, model: ServedModel) -> float | None:
        """When an idle loaded model will be unloaded (``time.time()`` scale); None: never."""
        keep = model.idle_timeout(self.settings.keep_alive)
        if model.spec.pinned or keep < 0:
            return None
        if model.active:
            return time.time() + keep
        return time.time() + max(0.0, keep - (time.monotonic() - model.last_used))

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load pinned models (and the first one when ``preload``), then watch for idle ones."""
        first = [m for m in self.all_models() if m.spec.pinned]
        if self.settings.preload and self.all_models():
            head = self.all_models()[0]
            if head not in first:
                first.insert(0, head)
        self._tasks.append(asyncio.create_task(self._startup(first)))
        # always watched: a request's keep_alive may set a timeout on a forever-server
        self._tasks.append(asyncio.create_task(self._idle_loop()))

    async def _startup(self, models: list[ServedModel]) -> None:
        for model in models:
            try:
                await self._ensure_loaded(model)
            except GGUFWorkerError as exc:
                self.startup_error = f"{model.spec.name}: {exc}"
                logger.error("could not load %s at start: %s", model.spec.name, exc)
        self.startup_done.set()

    async def acquire(self, name: str | None, *, embedding: bool = False) -> Lease:
        """Hold a model for one request, loading it first when needed.

        Raises:
            ModelNotFoundError: the name is not served.
            ModelLoadError: the model failed to load, or its engine stopped (the model is named;
                other models keep serving).
        """
        model = self.lookup(name, embedding=embedding)
        model.active += 1
        try:
            await self._ensure_loaded(model)
            if not getattr(model.engine, "alive", True):
                await self._engine_stopped(model)
        except BaseException:
            model.active -= 1
            raise
        model.last_used = time.monotonic()
        lease = Lease(model)
        adapter = self.adapter_of(name)
        if adapter is not None:  # BASE:NAME runs under that adapter at its scale
            lease.name = model_id(adapter[0], adapter[1].name)
            lease.lora = ((adapter[1].name, adapter[1].scale),)
        return lease

    async def _engine_stopped(self, model: ServedModel) -> None:
        """A loaded model whose engine thread died: fail this request naming the model, free
        the dead engine, and let the next request load the model again. Other models are not
        touched (each has its own engine, thread and lock).

        Raises:
            ModelLoadError: always.
        """
        message = (
            f"model {model.spec.name!r} is unavailable: its engine stopped unexpectedly "
            "(see the server log); the next request loads it again"
        )
        async with model.lock:
            engine = model.engine
            if engine is not None and not getattr(engine, "alive", True):
                logger.error("%s", message)
                model.engine, model.state, model.error = None, "failed", message
                try:
                    await asyncio.to_thread(engine.close)
                except Exception:
                    logger.exception("closing the stopped engine of %s failed", model.spec.name)
        raise ModelLoadError(message)

    async def _ensure_loaded(self, model: ServedModel) -> None:
        if model.state == "ready":
            return
        async with model.lock:
            if model.state == "ready":
                return
            await self._make_room(model)
            model.state, model.error = "loading", None
            model.path = None  # unknown until resolved (a pull may be downloading it)
            started = time.monotonic()
            try:
                path = await asyncio.to_thread(self._resolver, model.spec.source, self.settings)
                model.path = Path(path)
                engine = await asyncio.to_thread(
                    self._factory, Path(path), model.spec, self.settings
                )
                try:  # its LoRA adapters, checked against it (a wrong base fails the load)
                    await asyncio.to_thread(self.loras.attach, engine, model.spec.name)
                except BaseException:
                    await asyncio.to_thread(engine.close)
                    raise
                model.engine = engine
            except (ModelNotFoundError, RpcWorkerUnavailableError) as exc:
                # as they are: a 404, or a 503 naming the RPC worker that does not answer
                model.state, model.error = "failed", str(exc)
                raise
            except Exception as exc:
                # named, so that a client of a multi-model server knows which model is broken
                model.state, model.error = "failed", str(exc)
                raise ModelLoadError(
                    f"model {model.spec.name!r} could not be loaded: {exc}"
                ) from exc
            model.state = "ready"
            model.last_used = time.monotonic()
            logger.info("loaded %s in %.1fs", model.spec.name, time.monotonic() - started)
        for callback in self.on_ready:
            try:
                callback(model)
            except Exception:
                logger.exception("on_ready callback failed")

    async def unload(self, model: ServedModel) -> None:
        """Close a model's engine (it loads again on next use)."""
        async with model.lock:
            if model.state != "ready" or model.active:
                return
            engine, model.engine, model.state = model.engine, None, "unloaded"
            await asyncio.to_thread(engine.close)
            logger.info("unloaded %s", model.spec.name)

    # --- explicit load, unload and pins (the lifecycle API) -----------------------------------

    def set_pinned(self, model: ServedModel, pinned: bool) -> None:
        """Pin ``model`` (never unloaded for idleness, never evicted) or release its pin."""
        if model.spec.pinned != pinned:
            model.spec = replace(model.spec, pinned=pinned)

    async def load(
        self, name: str, *, keep_alive: float | None = None, pin: bool | None = None
    ) -> ServedModel:
        """Load a served model now, or a registry model not served yet (it is pulled when
        missing, then served from now on).

        Args:
            name: a served name, alias or registry name.
            keep_alive: idle seconds before it unloads (negative: forever, which pins it).
            pin: pin it (True) or release its pin (False); None leaves the pin as it is.

        Raises:
            ModelNotFoundError: neither served nor in the registry.
            ModelLoadError: the model failed to load.
        """
        try:
            model = self.lookup(name)
        except ModelNotFoundError:
            entry = self.registry_entry(name)
            if entry is None:
                raise
            model = self.add(entry.name)
        if keep_alive is not None:
            model.keep_alive = keep_alive
            if keep_alive < 0:
                pin = True if pin is None else pin
        if pin is not None:
            self.set_pinned(model, pin)
        await self._ensure_loaded(model)
        model.last_used = time.monotonic()
        return model

    async def stop(self, model: ServedModel, *, poll_s: float = 0.05) -> None:
        """Unload ``model`` once its in-flight requests have finished (their streams run to
        the end); its pin is released. A model still loading is unloaded when ready."""
        self.set_pinned(model, False)
        while model.state in ("ready", "loading"):
            if model.state == "ready" and model.active == 0:
                await self.unload(model)
                continue
            await asyncio.sleep(poll_s)

    def loaded_count(self) -> int:
        """Models loaded or loading now."""
        return sum(m.state in ("ready", "loading") for m in self.all_models())

    async def _make_room(self, model: ServedModel) -> None:
        """Keep within ``max_loaded_models``: unload the least recently used idle models that
        are not pinned. When every loaded model is pinned or busy the limit is exceeded (with a
        warning) rather than a request refused."""
        limit = self.settings.max_loaded_models
        if limit <= 0:
            return
        while True:
            others = [
                m for m in self.all_models() if m is not model and m.state in ("ready", "loading")
            ]
            if len(others) < limit:
                return
            idle = [m for m in others if m.state == "ready" and not m.spec.pinned and m.active == 0]
            if not idle:
                logger.warning(
                    "loading %s exceeds --max-loaded-models %d: every loaded model is pinned "
                    "or busy",
                    model.spec.name,
                    limit,
                )
                return
            victim = min(idle, key=lambda m: m.last_used)
            logger.info("unloading %s to make room for %s", victim.spec.name, model.spec.name)
            await self.unload(victim)

    async def _idle_loop(self) -> None:
        default = self.settings.keep_alive
        while True:
            keeps = [m.idle_timeout(default) for m in self.all_models()]
            shortest = min((k for k in keeps if k > 0), default=20.0)
            await asyncio.sleep(max(0.05, min(5.0, shortest / 4)))
            now = time.monotonic()
            for model in self.all_models():
                keep = model.idle_timeout(default)
                if (
                    model.state == "ready"
                    and not model.spec.pinned
                    and model.active == 0
                    and keep >= 0
                    and now - model.last_used >= keep
                ):
                    await self.unload(model)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for model in self.all_models():
            if model.engine is not None:
                engine, model.engine, model.state = model.engine, None, "unloaded"
                try:
                    await asyncio.to_thread(engine.close)
                except Exception:
                    logger.exception("closing %s failed", model.spec.name)
