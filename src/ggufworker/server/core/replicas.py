"""Several engines of one model behind one name: replicas, and which one a request goes to.

``--replicas N`` loads a model N times, each copy its own llama_context, slots and scheduler
thread: one per GPU on a machine with GPUs (replica ``i`` whole on GPU ``main_gpu + i``), or
CPU engines sharing the cores. :class:`ReplicaSet` looks like one engine to the serving code;
:func:`choose_replica` is the routing policy, a pure function of each replica's load:

1. Prefix affinity. A replica whose idle slot already holds the longest common prefix of the
   prompt (its KV cache is reused there, that prefill is skipped) wins when it has a free slot
   and that prefix is at least ``affinity`` of the prompt (so a short shared system prompt does
   not pull every request to one replica). Replicas holding the same best prefix share it.
2. Otherwise the replica with the most free slots (slots minus running and queued requests);
   ties go to the replica chosen least recently, so light load alternates.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ggufworker.engine.types import GenerationRequest
from ggufworker.errors import EngineClosedError

if TYPE_CHECKING:
    from ggufworker.config import ServerSettings
    from ggufworker.engine import Engine
    from ggufworker.engine.devices import Placement
    from ggufworker.engine.handle import Completion, EngineStats, RequestHandle

logger = logging.getLogger(__name__)

# Share of the prompt a replica's cached prefix must cover to win on affinity alone.
DEFAULT_AFFINITY = 0.5


@dataclass(frozen=True)
class ReplicaLoad:
    """What routing knows about one replica when a request arrives."""

    free_slots: int  # slots minus running and queued requests (negative: requests queued)
    cached_prefix: int = 0  # prompt tokens an idle slot of this replica already holds
    last_pick: int = 0  # routing sequence number of its last request (0: never)


def choose_replica(
    loads: Sequence[ReplicaLoad], *, prompt_tokens: int, affinity: float = DEFAULT_AFFINITY
) -> int:
    """The index of the replica a request of ``prompt_tokens`` tokens goes to.

    Args:
        loads: one entry per replica.
        prompt_tokens: the prompt's length.
        affinity: share of the prompt a cached prefix must cover to decide alone.

    Raises:
        ValueError: ``loads`` is empty.
    """
    if not loads:
        raise ValueError("no replicas to choose from")
    pool = [i for i, load in enumerate(loads) if load.free_slots > 0]
    if pool:
        best = max(loads[i].cached_prefix for i in pool)
        if best > 0 and best >= affinity * prompt_tokens:
            pool = [i for i in pool if loads[i].cached_prefix == best]
    else:
        pool = list(range(len(loads)))
    return min(pool, key=lambda i: (-loads[i].free_slots, loads[i].last_pick, i))


@dataclass
class Replica:
    """One engine of a replicated model."""

    index: int
    device: str  # "CUDA1", "cpu"
    engine: Engine
    last_pick: int = 0


@dataclass(frozen=True)
class ReplicaStats:
    """One replica's load, as /metrics and /v1/models show it."""

    index: int
    device: str
    slots: int
    busy_slots: int
    queue_depth: int
    requests: int  # finished requests
    cached_tokens: int  # prompt tokens served from its KV cache
    alive: bool = True  # its scheduler thread runs


class ReplicaSet:
    """N engines of one model that serve as one: the engine interface the server uses, with
    each request sent to the replica :func:`choose_replica` picks."""

    def __init__(self, replicas: Sequence[Replica], *, affinity: float = DEFAULT_AFFINITY) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one engine")
        self.replicas = list(replicas)
        self.affinity = affinity
        self._lock = threading.Lock()
        self._picks = 0
        first = self.replicas[0].engine.info
        total = sum(r.engine.info.n_parallel for r in self.replicas)
        self.info = replace(first, n_parallel=total)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        placements: Sequence[Placement],
        *,
        n_threads: int | None = None,
        **options: Any,
    ) -> ReplicaSet:
        """Load one engine per placement (closing those loaded when one fails).

        Args:
            path: the GGUF file.
            placements: where each replica goes (see :func:`plan_placements`).
            n_threads: CPU threads per replica (default: the cores shared out between CPU
                replicas).
            options: the other :meth:`Engine.load` options, the same for every replica.
        """
        from ggufworker.engine import Engine
        from ggufworker.engine.devices import threads_per_replica

        replicas: list[Replica] = []
        try:
            for i, place in enumerate(placements):
                threads = n_threads
                if place.device == "cpu":
                    threads = threads_per_replica(n_threads, len(placements))
                engine = Engine.load(path, n_threads=threads, **options, **place.engine_options())
                replicas.append(Replica(i, place.device, engine))
                logger.info("replica %d of %s on %s", i, engine.info.name, place.device)
        except BaseException:
            for replica in replicas:
                replica.engine.close()
            raise
        return cls(replicas)

    # --- routing -----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """True while at least one replica's engine runs; requests go only to running ones
        (a replica whose scheduler thread died takes no more requests)."""
        return any(_alive(r.engine) for r in self.replicas)

    def loads(self, tokens: Sequence[int], replicas: Sequence[Replica]) -> list[ReplicaLoad]:
        """The free slots and cached prefix of ``tokens`` of each of ``replicas``."""
        out = []
        for r in replicas:
            stats = r.engine.stats()
            free = stats.n_parallel - stats.busy_slots - stats.queue_depth
            out.append(ReplicaLoad(free, r.engine.cached_prefix(tokens), r.last_pick))
        return out

    def route(self, tokens: Sequence[int]) -> Replica:
        """The replica a prompt of ``tokens`` goes to (and note the pick).

        Raises:
            EngineClosedError: no replica is running.
        """
        live = [r for r in self.replicas if _alive(r.engine)]
        if not live:
            raise EngineClosedError(f"every replica of {self.info.name} has stopped")
        with self._lock:
            index = choose_replica(
                self.loads(tokens, live), prompt_tokens=len(tokens), affinity=self.affinity
            )
            self._picks += 1
            replica = live[index]
            replica.last_pick = self._picks
        return replica

    def _routed(self, request: GenerationRequest) -> tuple[Replica, GenerationRequest]:
        # Tokenized once here for routing; the replica gets the ids (the same ids it would
        # make: every replica has the same vocabulary).
        if isinstance(request.prompt, str):
            tokens = self.replicas[0].engine.tokenize(
                request.prompt, add_special=request.add_bos, parse_special=request.parse_special
            )
            request = replace(request, prompt=tokens)
        return self.route(request.prompt), request  # type: ignore[arg-type]

    # --- the engine interface ----------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a generation on the replica routing picks (see :meth:`Engine.submit`)."""
        replica, request = self._routed(request)
        return replica.engine.submit(request)

    def generate(self, request: GenerationRequest) -> Completion:
        """Run a request to the end on the replica routing picks (blocking)."""
        replica, request = self._routed(request)
        return replica.engine.generate(request)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeddings from the replica with the most free slots."""
        replica = self.route([])
        return replica.engine.embed(texts)

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        return self.replicas[0].engine.tokenize(
            text, add_special=add_special, parse_special=parse_special
        )

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.replicas[0].engine.detokenize(ids)

    def render_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        return self.replicas[0].engine.render_chat(messages, **kwargs)

    def run_on_scheduler(self, fn: Any) -> Any:
        """Run ``fn`` on the first replica's scheduler thread."""
        return self.replicas[0].engine.run_on_scheduler(fn)

    def clear_cache(self) -> None:
        """Forget every replica's idle cached prefixes."""
        for r in self.replicas:
            r.engine.clear_cache()

    @property
    def pipelined(self) -> bool:
        return self.replicas[0].engine.pipelined

    @property
    def kv_layout(self) -> str:
        return str(self.replicas[0].engine.kv_layout)

    @property
    def sampling(self) -> str:
        return str(self.replicas[0].engine.sampling)

    @property
    def kv_cache_type(self) -> str:
        return str(self.replicas[0].engine.kv_cache_type)

    def stats(self) -> EngineStats:
        """The replicas' loads and totals added up."""
        from ggufworker.engine.handle import EngineStats

        parts = [r.engine.stats() for r in self.replicas]
        return EngineStats(
            n_parallel=sum(s.n_parallel for s in parts),
            busy_slots=sum(s.busy_slots for s in parts),
            queue_depth=sum(s.queue_depth for s in parts),
            max_queue=sum(s.max_queue for s in parts),
            total_prompt_tokens=sum(s.total_prompt_tokens for s in parts),
            total_generated_tokens=sum(s.total_generated_tokens for s in parts),
            total_cached_tokens=sum(s.total_cached_tokens for s in parts),
            total_requests=sum(s.total_requests for s in parts),
            spec_drafts=sum(s.spec_drafts for s in parts),
            spec_draft_tokens=sum(s.spec_draft_tokens for s in parts),
            spec_accepted_tokens=sum(s.spec_accepted_tokens for s in parts),
            spec_accepted_per_pos=tuple(
                sum(c)
                for c in itertools.zip_longest(
                    *(s.spec_accepted_per_pos for s in parts), fillvalue=0
                )
            ),
        )

    def close(self) -> None:
        """Close every replica."""
        for r in self.replicas:
            r.engine.close()


def _alive(engine: Any) -> bool:
    return bool(getattr(engine, "alive", True))


def replica_stats(engine: Any) -> list[ReplicaStats]:
    """Per-replica load of a loaded model: one entry per replica, one for a plain engine
    (an engine that knows its replicas itself, as the Ray path's, answers for them)."""
    own = getattr(engine, "replica_stats", None)
    if callable(own):
        return list(own())
    if isinstance(engine, ReplicaSet):
        members = [(r.index, r.device, r.engine) for r in engine.replicas]
    else:
        members = [(0, getattr(getattr(engine, "info", None), "backend", "unknown"), engine)]
    out = []
    for index, device, member in members:
        s = member.stats()
        out.append(
            ReplicaStats(
                index=index,
                device=device,
                slots=s.n_parallel,
                busy_slots=s.busy_slots,
                queue_depth=s.queue_depth,
                requests=getattr(s, "total_requests", 0),
                cached_tokens=getattr(s, "total_cached_tokens", 0),
                alive=_alive(member),
            )
        )
    return out


def plan_placements(settings: ServerSettings, *, embedding: bool = False) -> list[Placement]:
    """Where the engines of one served model go, from the server settings (embedding models
    get one engine).

    Raises:
        InvalidRequestError: the GPU flags name GPUs that are not there, or contradict each
            other (see :func:`ggufworker.engine.devices.replica_placements`).
    """
    from ggufworker.engine.devices import replica_placements
    from ggufworker.errors import InvalidRequestError

    try:
        return replica_placements(
            1 if embedding else settings.replicas,
            split_mode=settings.split_mode,
            main_gpu=settings.main_gpu,
            # with --rpc the split is over the RPC-split models' devices (loading.rpc_placement)
            tensor_split=None if settings.rpc else settings.tensor_split or None,
            n_gpu_layers=settings.gpu_layers,
        )
    except InvalidRequestError as exc:
        flag = "--" + (exc.param or "gpu").replace("_", "-")
        raise InvalidRequestError(f"{flag}: {exc}", param=exc.param) from exc
