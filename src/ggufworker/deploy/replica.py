"""The replica side of a Ray Serve deployment: one engine of one model per Ray replica.

Ray Serve builds :class:`EngineReplica` on a node with the resources the deployment asks for
(CPUs or GPUs), restarts it when its actor dies or :meth:`EngineReplica.check_health` fails,
and sends it the calls the ingress's :class:`~ggufworker.deploy.remote.RemoteEngine` makes.
The engine is the same one ``ggufworker serve`` runs (:func:`load_engine`, the server's
settings, one replica per Ray replica).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from ggufworker.config import ServerSettings
from ggufworker.deploy.remote import ReplicaFacts, ReplicaReport, report_now
from ggufworker.engine.types import GenerationRequest, TokenEvent
from ggufworker.errors import EngineClosedError

logger = logging.getLogger(__name__)


class EngineReplica:
    """One loaded engine of a model, as a Ray Serve deployment's replica.

    Args:
        source: the model (registry name or GGUF path on the replica's node; registry models
            are pulled into the node's ggufworker home on first use).
        name: the name clients use.
        settings: the server settings (engine options: context, slots, threads, GPU layers...).
        embedding: load it as an embedding model.
    """

    def __init__(
        self, source: str, name: str, settings: ServerSettings, embedding: bool = False
    ) -> None:
        from ggufworker.server.core.loading import load_engine, resolve_source
        from ggufworker.server.core.models import ModelSpec

        # replicas are Ray's now: one engine per Ray replica
        self._settings = settings.model_copy(update={"replicas": 1})
        path = resolve_source(source, self._settings)
        self._engine = load_engine(path, ModelSpec(name, source, embedding), self._settings)
        self._replica, self._node = _identity()
        logger.info("replica %s of %s on node %s", self._replica, name, self._node)

    # --- calls from the ingress --------------------------------------------------------------

    def facts(self) -> ReplicaFacts:
        e = self._engine
        return ReplicaFacts(
            info=e.info,
            pipelined=bool(getattr(e, "pipelined", False)),
            kv_layout=str(getattr(e, "kv_layout", "")),
            sampling=str(getattr(e, "sampling", "")),
            kv_cache_type=str(getattr(e, "kv_cache_type", "")),
            pooling=getattr(e, "pooling", None),
        )

    async def generate_stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[TokenEvent | ReplicaReport]:
        """The request's token events, then this replica's report. Cancelling the call (the
        client went away) cancels the request in the engine."""
        handle = self._engine.submit(request)
        async for event in handle:
            yield event
        yield self.report()

    async def embeddings(self, inputs: list[Any], *, truncate: bool = False) -> Any:
        return await asyncio.wrap_future(self._engine.submit_embeddings(inputs, truncate=truncate))

    async def rerank(self, query: str, documents: list[str], *, truncate: bool = False) -> Any:
        future = self._engine.submit_rerank(query, documents, truncate=truncate)
        return await asyncio.wrap_future(future)

    def report(self) -> ReplicaReport:
        return report_now(self._engine, self._replica, self._node)

    def clear_cache(self) -> None:
        self._engine.clear_cache()

    # --- Ray Serve hooks ---------------------------------------------------------------------

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose scheduler thread died is replaced."""
        if not getattr(self._engine, "alive", True):
            raise EngineClosedError("the engine's scheduler thread stopped")

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.close()


def _identity() -> tuple[str, str]:
    """(replica id, node id) of the running replica."""
    import ray
    from ray import serve

    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # built outside a Serve replica (tests of the class alone)
        replica = "local"
    return replica, ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
