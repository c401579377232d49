"""A model split over llama.cpp RPC workers (``--rpc``), kept alive under supervision.

llama.cpp's RPC client aborts the process when a worker goes away, so the model's engine runs
in a child process (:class:`~ggufworker.engine.child.ChildEngine`) and :class:`RpcSplitEngine`
watches it and its workers:

- a worker that refuses connections (its port closed: the worker is gone) is *down*; the child
  is stopped if it still runs, open streams end with an error event, and requests get a 503
  (:class:`~ggufworker.errors.RpcWorkerUnavailableError`) naming the worker;
- every ``poll_s`` seconds the down workers are tried again; once they all accept connections
  the model loads again in a new child, with no server restart;
- other models of the server are not touched (they run in the server process).

A probe is a TCP connect: refused or unreachable is down; accepted, or no answer in time, is
up (a worker serves one client at a time and leaves other connections waiting in its backlog).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ggufworker.engine.chat import TextHelpers
from ggufworker.errors import (
    EngineClosedError,
    InvalidRequestError,
    ModelLoadingError,
    RpcWorkerUnavailableError,
)

if TYPE_CHECKING:
    from ggufworker.config import ServerSettings
    from ggufworker.engine.child import ChildEngine
    from ggufworker.engine.handle import Completion, EngineStats, RequestHandle
    from ggufworker.engine.types import GenerationRequest
    from ggufworker.server.core.models import ModelManager

logger = logging.getLogger(__name__)

#: seconds between two looks at a split model's workers
POLL_S = 1.0
_DOWN_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET}


# --- endpoints -----------------------------------------------------------------------------


def parse_endpoint(text: str) -> str:
    """``HOST:PORT`` of an RPC worker, checked (``[v6]:PORT`` for IPv6 addresses).

    Raises:
        InvalidRequestError: not ``HOST:PORT`` with a port in 1..65535.
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequestError(
            f"RPC worker {text!r} is not HOST:PORT (e.g. 127.0.0.1:50052)", param="rpc"
        )
    return f"{host}:{int(port)}"


def parse_rpc_entry(entry: str) -> tuple[str | None, tuple[str, ...]]:
    """One ``--rpc`` value: ``[MODEL=]HOST:PORT[,HOST:PORT...]`` as (model or None, endpoints).

    Raises:
        InvalidRequestError: an empty list or a malformed endpoint.
    """
    name, sep, rest = entry.partition("=")
    model, text = (name.strip() or None, rest) if sep else (None, entry)
    endpoints = tuple(parse_endpoint(e) for e in text.split(",") if e.strip())
    if not endpoints:
        raise InvalidRequestError(f"--rpc {entry!r} names no worker", param="rpc")
    if len(set(endpoints)) != len(endpoints):
        raise InvalidRequestError(f"--rpc {entry!r} names a worker twice", param="rpc")
    return model, endpoints


def rpc_assignments(settings: ServerSettings) -> dict[str, tuple[str, ...]]:
    """Served model name -> the RPC workers it is split over (``--rpc`` without a model name
    is for the first ``--model``).

    Raises:
        InvalidRequestError: an entry names a model that is not served for generation, two
            entries name the same model, or two models the same worker.
    """
    from ggufworker.server.core.models import served_name

    models = settings.served_models()
    names = {served_name(m): m for m in models}
    out: dict[str, tuple[str, ...]] = {}
    for entry in settings.rpc:
        model, endpoints = parse_rpc_entry(entry)
        if model is None:
            if not models:
                raise InvalidRequestError("--rpc needs a --model to split", param="rpc")
            name = served_name(models[0])
        else:
            name = next((n for n, src in names.items() if model in (n, src)), "")
            if not name:
                served = ", ".join(names) or "none"
                raise InvalidRequestError(
                    f"--rpc {entry!r}: model {model!r} is not served (served: {served})",
                    param="rpc",
                )
        if name in out:
            raise InvalidRequestError(f"--rpc names model {name!r} twice", param="rpc")
        # llama.cpp's worker serves one client at a time: a second model would wait for ever
        shared = next((m for m, e in out.items() if set(e) & set(endpoints)), None)
        if shared is not None:
            worker = sorted(set(out[shared]) & set(endpoints))[0]
            raise InvalidRequestError(
                f"--rpc: worker {worker} is named for {shared!r} and {name!r}; a worker serves "
                "one model at a time (start another worker)",
                param="rpc",
            )
        out[name] = endpoints
    return out


def probe(endpoint: str, *, timeout: float = 1.0) -> bool:
    """Whether the worker at ``endpoint`` may be up: False only when a connection is refused
    or the host unreachable (a busy worker's full backlog times out: counted as up)."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except TimeoutError:
        return True
    except OSError as exc:
        if exc.errno in _DOWN_ERRNOS or isinstance(exc, socket.gaierror):
            return False
        return True


# --- the supervised engine -----------------------------------------------------------------


class RpcSplitEngine(TextHelpers):
    """The engine interface of a model split over RPC workers, its engine in a child process
    that is restarted when its workers come back (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        endpoints: Sequence[str],
        options: Mapping[str, Any],
        *,
        poll_s: float = POLL_S,
        probe_fn: Callable[[str], bool] = probe,
    ) -> None:
        """Load the model (in a child process) and start watching it.

        Args:
            path: the GGUF file.
            endpoints: ``host:port`` of its workers, in device order.
            options: :meth:`Engine.load` keyword arguments (``rpc_servers`` is set here).
            poll_s: seconds between two looks at the workers.
            probe_fn: whether a worker may be up (tests replace it).

        Raises:
            RpcWorkerUnavailableError: a worker does not answer.
            ModelLoadError, InvalidRequestError: the model cannot be loaded this way.
        """
        from ggufworker.engine.model import Model

        self.path = Path(path)
        self.endpoints = tuple(endpoints)
        self.name = str(options.get("name") or self.path.stem)
        self._options = {**options, "rpc_servers": self.endpoints}
        self.poll_s = poll_s
        self._probe = probe_fn
        self._lock = threading.Lock()
        self._down: set[str] = set()
        self._child: ChildEngine | None = None
        self._state = "loading"  # loading, ready, down
        self._closed = False
        self._stop = threading.Event()
        self.reloads = 0
        self._vocab = Model(self.path, vocab_only=True)
        try:
            child = self._load()
        except BaseException:
            self._vocab.close()
            raise
        self.info = child.info
        self._watcher = threading.Thread(target=self._watch, name=f"rpc-{self.name}", daemon=True)
        self._watcher.start()

    def _unavailable(self, down: Sequence[str]) -> RpcWorkerUnavailableError:
        workers = ", ".join(sorted(down))
        return RpcWorkerUnavailableError(
            f"model {self.name!r} is unavailable: RPC worker {workers} does not answer; the "
            "model is loaded again when the worker is back",
            workers=tuple(sorted(down)),
        )

    def _down_now(self) -> list[str]:
        return [e for e in self.endpoints if not self._probe(e)]

    def _load(self) -> ChildEngine:
        """Start a child engine over the workers (they must all answer first)."""
        from ggufworker.engine.child import ChildEngine, ChildExitedError

        down = self._down_now()
        if down:
            with self._lock:
                self._down, self._state = set(down), "down"
            raise self._unavailable(down)
        try:
            child = ChildEngine(
                self.path, self._options, on_exit=self._child_exited, vocab=self._vocab
            )
        except ChildExitedError as exc:  # a worker went away during the load?
            down = self._down_now()
            with self._lock:
                self._down, self._state = set(down), "down"
            if down:
                raise self._unavailable(down) from exc
            raise
        with self._lock:
            self._child, self._down, self._state = child, set(), "ready"
        return child

    def _child_exited(self, code: int | None) -> BaseException:
        """The child ended on its own (a worker went away, usually): what its streams get."""
        down = self._down_now()
        with self._lock:
            self._down.update(down)
            self._state = "down"
            down = sorted(self._down)
        if down:
            logger.error("RPC worker %s of %s does not answer", ", ".join(down), self.name)
            return self._unavailable(down)
        return EngineClosedError(
            f"model {self.name!r} is unavailable: its engine process stopped (exit code "
            f"{code}); it is being loaded again"
        )

    def _watch(self) -> None:
        backoff = self.poll_s
        while not self._stop.wait(self.poll_s):
            child = self._child
            if child is not None and child.alive:
                down = self._down_now()
                if down and not self._stop.is_set():
                    logger.error(
                        "RPC worker %s of %s does not answer: stopping the model's engine",
                        ", ".join(down),
                        self.name,
                    )
                    with self._lock:
                        self._down.update(down)
                    child.kill()
                continue
            if self._stop.wait(backoff - self.poll_s):
                return
            # only the down workers are tried until they answer (a probe of an idle worker is a
            # client connection it logs); the load checks them all again
            with self._lock:
                waiting = sorted(self._down)
            down = [e for e in waiting if not self._probe(e)]
            with self._lock:
                self._down = set(down)
            if down:
                continue
            try:
                self._reload()
                backoff = self.poll_s
            except RpcWorkerUnavailableError:  # down again (recorded): wait for it
                continue
            except Exception as exc:  # logged; tried again later
                logger.warning("reloading %s failed: %s", self.name, exc)
                backoff = min(30.0, backoff * 2)

    def _reload(self) -> None:
        with self._lock:
            if self._closed:
                return
            old, self._child, self._state = self._child, None, "loading"
        if old is not None:
            old.close()
        logger.info("RPC workers of %s answer again: loading it", self.name)
        child = self._load()
        self.reloads += 1
        if self._closed:  # closed while loading
            child.close()
        else:
            logger.info("%s is back (reload %d)", self.name, self.reloads)

    def _current(self) -> ChildEngine:
        """The running child engine, or the 503 that says why there is none."""
        with self._lock:
            child, state, down = self._child, self._state, set(self._down)
        if self._closed:
            raise EngineClosedError("the engine is closed")
        if child is not None and child.alive:
            return child
        if not down and state != "loading":  # it just ended: find out why before answering
            down = set(self._down_now())
        if down:
            raise self._unavailable(sorted(down))
        if state == "loading":
            raise ModelLoadingError(f"model {self.name!r} is loading again over its RPC workers")
        raise EngineClosedError(
            f"model {self.name!r} is unavailable: its engine process stopped; it is being "
            "loaded again"
        )

    # --- state, for /v1/models and /metrics --------------------------------------------------

    @property
    def state(self) -> str:
        """``ready``, ``loading`` (again, after its workers came back) or ``down``."""
        return self._state

    def rpc_workers(self) -> list[dict[str, str]]:
        """Each worker and its state (``up`` or ``down``), in device order."""
        with self._lock:
            down = set(self._down)
        return [{"endpoint": e, "state": "down" if e in down else "up"} for e in self.endpoints]

    # --- the engine interface ----------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a generation (see :meth:`Engine.submit`).

        Raises:
            RpcWorkerUnavailableError: a worker is down (the message names it).
            ModelLoadingError: the workers are back and the model is loading again.
            EngineClosedError: the engine process stopped for another reason, or closed.
        """
        return self._current().submit(request)

    def generate(self, request: GenerationRequest) -> Completion:
        """Run a request to the end (blocking)."""
        return self._current().generate(request)

    def stats(self) -> EngineStats:
        """The child's load (nothing busy while it is down)."""
        child = self._child
        if child is not None:
            return child.stats()
        from ggufworker.engine.handle import EngineStats

        return EngineStats(self.info.n_parallel, 0, 0, 0, 0, 0)

    def cache_stats(self) -> Any:
        return self._current().cache_stats()

    def clear_cache(self) -> None:
        child = self._child
        if child is not None and child.alive:
            child.clear_cache()

    @property
    def alive(self) -> bool:
        """True until closed: a down worker is waited for, not a reason to drop the model."""
        return not self._closed

    @property
    def kv_layout(self) -> str:
        child = self._child
        return child.kv_layout if child is not None else "unified"

    @property
    def kv_cache_type(self) -> str:
        child = self._child
        return child.kv_cache_type if child is not None else "f16/f16"

    @property
    def sampling(self) -> str:
        child = self._child
        return child.sampling if child is not None else "host"

    @property
    def pipelined(self) -> bool:
        child = self._child
        return child.pipelined if child is not None else False

    def close(self) -> None:
        """Stop watching and stop the child engine."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            child, self._child = self._child, None
        self._stop.set()
        if child is not None:
            child.close()
        self._watcher.join(60)
        self._vocab.close()


def load_split(path: Path, endpoints: Sequence[str], options: Mapping[str, Any]) -> RpcSplitEngine:
    """Load a model split over RPC workers (generation only: one engine, no adapters).

    Raises:
        InvalidRequestError: an embedding model, or several replicas, asked for with ``--rpc``.
        RpcWorkerUnavailableError: a worker does not answer.
    """
    if options.get("embedding"):
        raise InvalidRequestError("--rpc splits generation models, not embedding models")
    return RpcSplitEngine(path, endpoints, options)


# --- /metrics ------------------------------------------------------------------------------


class RpcCollector(Collector):
    """``ggufworker_rpc_worker_up{model, worker}``: 1 while a split model's worker answers."""

    def __init__(self, manager: Callable[[], ModelManager | None]) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "ggufworker_rpc_worker_up",
            "1 while an RPC worker of a split model answers, 0 while it is down",
            labels=["model", "worker"],
        )
        ready = GaugeMetricFamily(
            "ggufworker_rpc_model_ready",
            "1 while a model split over RPC workers serves (0: a worker is down or it reloads)",
            labels=["model"],
        )
        manager = self._manager()
        for model in manager.all_models() if manager else ():
            engine = model.engine
            if not isinstance(engine, RpcSplitEngine):
                continue
            ready.add_metric([model.spec.name], 1.0 if engine.state == "ready" else 0.0)
            for worker in engine.rpc_workers():
                value = 1.0 if worker["state"] == "up" else 0.0
                up.add_metric([model.spec.name, worker["endpoint"]], value)
        yield from (up, ready)


__all__ = [
    "RpcCollector",
    "RpcSplitEngine",
    "load_split",
    "parse_endpoint",
    "parse_rpc_entry",
    "probe",
    "rpc_assignments",
]
