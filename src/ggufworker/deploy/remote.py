"""The ingress side of a Ray Serve deployment: an engine whose generations run on replicas.

:class:`RemoteEngine` is what the server's model manager holds for a model served by Ray
replicas. It looks like one engine to the serving code: the vocabulary, chat template and
model facts are local (the GGUF opened once, weights memory-mapped and never computed with),
so tokenizing and rendering cost no round trip; generations, embeddings and reranks go to the
model's replicas through a Ray Serve deployment handle, whose request router
(:mod:`ggufworker.deploy.router`) picks the replica.

A replica that dies mid-answer ends that stream with :class:`EngineClosedError` (503); a
request that had produced nothing yet is sent again once, and Ray's router sends it to a live
replica. Load figures come back with every answer (:class:`ReplicaReport`), so ``/metrics``
shows each replica's counters without polling them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from ggufworker.engine.chat import TextHelpers
from ggufworker.engine.handle import EngineStats
from ggufworker.engine.types import GenerationRequest, ModelInfo, TokenEvent
from ggufworker.errors import ContextLengthExceededError, EngineClosedError, GGUFWorkerError
from ggufworker.server.core.replicas import ReplicaStats

logger = logging.getLogger(__name__)

# a request whose replica died before its first event is sent once more
RESEND = 1


@dataclass(frozen=True)
class ReplicaReport:
    """One replica's load and lifetime counts, sent after each answer and on request."""

    replica: str  # Ray Serve's replica id
    node: str  # the Ray node it runs on
    stats: EngineStats
    kv_usage: float = 0.0
    at: float = 0.0  # time.time() when made


@dataclass(frozen=True)
class ReplicaFacts:
    """What the ingress asks a replica once, when the model loads."""

    info: ModelInfo
    pipelined: bool
    kv_layout: str
    sampling: str
    kv_cache_type: str
    pooling: Any = None  # embedding models: their pooling (see engine/embedding.py)


def unwrap(exc: BaseException) -> BaseException:
    """The exception to raise for a failed Ray call: our typed errors as the replica raised
    them, a replica that died as :class:`EngineClosedError`, anything else unchanged."""
    from ray.exceptions import RayActorError, RayTaskError

    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    if isinstance(cause, GGUFWorkerError):
        return cause
    if isinstance(exc, RayActorError) or isinstance(cause, RayActorError):
        return EngineClosedError("the replica serving this request stopped (Ray restarts it)")
    return exc


def _replica_gone(exc: BaseException) -> bool:
    return isinstance(unwrap(exc), EngineClosedError)


class RemoteEngine(TextHelpers):
    """The engine interface the server uses, over a Ray Serve deployment of engine replicas.

    Args:
        handle: the model's deployment handle (:class:`ray.serve.handle.DeploymentHandle`).
        vocab: a :class:`ggufworker.engine.model.Model` of the same GGUF, for the vocabulary.
        facts: the replica's model facts (n_ctx, slots...).
        replicas: how many replicas the deployment starts with (their slots add up).
    """

    def __init__(self, handle: Any, vocab: Any, facts: ReplicaFacts, *, replicas: int) -> None:
        self._handle = handle
        self._vocab = vocab
        self.info = replace(facts.info, n_parallel=facts.info.n_parallel * max(1, replicas))
        self.slots_per_replica = facts.info.n_parallel
        self.pipelined = facts.pipelined
        self.kv_layout = facts.kv_layout
        self.sampling = facts.sampling
        self.kv_cache_type = facts.kv_cache_type
        if facts.pooling is not None:
            self.pooling = facts.pooling
        self._lock = threading.Lock()
        self._inflight = 0
        self._reports: dict[str, ReplicaReport] = {}
        self._order: list[str] = []  # replica ids, first seen first (the index in /metrics)

    @classmethod
    def connect(cls, handle: Any, path: str, *, replicas: int) -> RemoteEngine:
        """Open the GGUF's vocabulary here and ask a replica for the model facts (blocking:
        call from a worker thread, as the model manager does).

        Raises:
            ModelLoadError: the GGUF cannot be opened here.
            EngineClosedError: no replica answered.
        """
        from ggufworker.engine.model import Model

        # weights stay memory-mapped and untouched: no layer offloaded, no repacked copy
        vocab = Model(path, n_gpu_layers=0, repack=False)
        try:
            facts = handle.facts.remote().result()
        except BaseException as exc:
            vocab.close()
            raise unwrap(exc) from None
        return cls(handle, vocab, facts, replicas=replicas)

    # --- requests (remote) -------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RemoteHandle:
        """A handle whose iteration runs ``request`` on a replica. The prompt is tokenized
        here (the router compares token ids) and checked against the context size.

        Raises:
            ContextLengthExceededError: the prompt leaves no room to generate.
        """
        if isinstance(request.prompt, str):
            ids = self.tokenize(
                request.prompt, add_special=request.add_bos, parse_special=request.parse_special
            )
            request = replace(request, prompt=ids)
        n_prompt = len(request.prompt)
        if n_prompt >= self.info.n_ctx:
            raise ContextLengthExceededError(
                f"the prompt is {n_prompt} tokens; this model's context is {self.info.n_ctx} "
                "tokens and at least one must be left to generate"
            )
        if request.request_id is None:
            request = replace(request, request_id=uuid.uuid4().hex)
        return RemoteHandle(self, request)

    def submit_embeddings(self, inputs: list[Any], *, truncate: bool = False) -> asyncio.Future:
        """Embeddings from a replica (call from the event loop; await the result)."""
        return asyncio.ensure_future(self._call("embeddings", inputs, truncate=truncate))

    def submit_rerank(
        self, query: str, documents: list[str], *, truncate: bool = False
    ) -> asyncio.Future:
        """Rerank scores from a replica (call from the event loop; await the result)."""
        return asyncio.ensure_future(self._call("rerank", query, documents, truncate=truncate))

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(RESEND + 1):
            try:
                return await getattr(self._handle, method).remote(*args, **kwargs)
            except Exception as exc:
                if attempt < RESEND and _replica_gone(exc):
                    continue
                raise unwrap(exc) from None
        raise AssertionError("unreachable")

    # --- load --------------------------------------------------------------------------------

    def note(self, report: ReplicaReport) -> None:
        """Keep a replica's latest report."""
        with self._lock:
            if report.replica not in self._reports:
                self._order.append(report.replica)
            self._reports[report.replica] = report

    def _begin(self) -> None:
        with self._lock:
            self._inflight += 1

    def _end(self) -> None:
        with self._lock:
            self._inflight -= 1

    def reports(self) -> list[ReplicaReport]:
        """The latest report of every replica heard from, first heard first."""
        with self._lock:
            return [self._reports[r] for r in self._order]

    def stats(self) -> EngineStats:
        """Requests in flight from this ingress (running up to the slots, the rest waiting)
        and the lifetime counts the replicas reported."""
        parts = [r.stats for r in self.reports()]
        with self._lock:
            inflight = self._inflight
        slots = self.info.n_parallel
        return EngineStats(
            n_parallel=slots,
            busy_slots=min(inflight, slots),
            queue_depth=max(0, inflight - slots),
            max_queue=sum(s.max_queue for s in parts),
            total_prompt_tokens=sum(s.total_prompt_tokens for s in parts),
            total_generated_tokens=sum(s.total_generated_tokens for s in parts),
            total_cached_tokens=sum(s.total_cached_tokens for s in parts),
            total_requests=sum(s.total_requests for s in parts),
        )

    def replica_stats(self) -> list[ReplicaStats]:
        """One entry per replica heard from (device ``ray:NODE/REPLICA``)."""
        return [
            ReplicaStats(
                index=i,
                device=f"ray:{r.node[:12]}/{r.replica}",
                slots=r.stats.n_parallel,
                busy_slots=r.stats.busy_slots,
                queue_depth=r.stats.queue_depth,
                requests=r.stats.total_requests,
                cached_tokens=r.stats.total_cached_tokens,
            )
            for i, r in enumerate(self.reports())
        ]

    def kv_usage(self) -> float:
        """The mean KV cache usage the replicas last reported."""
        reports = self.reports()
        return sum(r.kv_usage for r in reports) / len(reports) if reports else 0.0

    @property
    def alive(self) -> bool:
        return True  # Ray restarts replicas; a request finds out if none is left

    def clear_cache(self) -> None:
        """Ask a replica to forget its cached prefixes (Ray picks which)."""
        self._handle.clear_cache.remote().result()

    def close(self) -> None:
        """Close the local vocabulary (the replicas belong to Ray)."""
        self._vocab.close()


class RemoteHandle:
    """One generation running on a replica: ``async for`` it like the engine's handle."""

    def __init__(self, engine: RemoteEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self._request = request
        self.id = request.request_id or ""
        self.prompt_tokens = len(request.prompt)
        self._response: Any = None
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def cancel(self) -> None:
        """Cancel the call on the replica (its engine frees the slot)."""
        if not self._done and self._response is not None:
            self._response.cancel()
        self._done = True

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[TokenEvent]:
        engine = self._engine
        engine._begin()
        try:
            for attempt in range(RESEND + 1):
                started = False
                stream = engine._handle.options(stream=True).generate_stream
                self._response = stream.remote(self._request)
                try:
                    async for item in self._response:
                        if isinstance(item, ReplicaReport):
                            engine.note(item)
                            continue
                        started = True
                        if item.finish_reason is not None:
                            self._done = True
                        yield item
                    self._done = True
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not started and attempt < RESEND and _replica_gone(exc):
                        logger.warning(
                            "request %s: replica gone before it started; resent", self.id
                        )
                        continue
                    raise unwrap(exc) from None
        finally:
            if not self._done:
                self.cancel()
            engine._end()


def report_now(engine: Any, replica: str, node: str) -> ReplicaReport:
    """A :class:`ReplicaReport` of a local engine (the replica side)."""
    usage = engine.kv_usage() if hasattr(engine, "kv_usage") else 0.0
    return ReplicaReport(replica, node, engine.stats(), float(usage), time.time())
