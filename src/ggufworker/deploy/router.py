"""Ray Serve's request router for engine replicas: ``--replicas``' policy across hosts.

Ray Serve asks a request router to rank the live replicas for each request; it then sends the
request to the first ranked replica that is under its ``max_ongoing_requests`` (slots plus
queue). :class:`PrefixAffinityRouter` ranks with :func:`~ggufworker.server.core.replicas.
choose_replica`, the same function ``--replicas`` routes with on one host:

1. the replica that already holds the longest prefix of the prompt, when it has a free slot
   and that prefix is at least ``affinity`` of the prompt;
2. otherwise the one with the most free slots, ties to the one picked least recently.

What a replica holds is remembered here, by the router: the prompts it was last sent (the
``memory`` most recent per replica), which is what its slots and RAM tier keep. Free slots are
the replica's slots minus the requests this router has in flight on it.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from ggufworker.engine.types import GenerationRequest
from ggufworker.server.core.replicas import DEFAULT_AFFINITY, ReplicaLoad, choose_replica

logger = logging.getLogger(__name__)

# prompts remembered per replica (about what its slots and RAM tier hold)
DEFAULT_MEMORY = 16


def prompt_of(request: PendingRequest | None) -> list[int]:
    """The token ids of a pending generation (empty for other calls: they go by load)."""
    if request is None or not request.args:
        return []
    first = request.args[0]
    if isinstance(first, GenerationRequest) and not isinstance(first.prompt, str):
        return list(first.prompt)
    return []


class PrefixMemory:
    """The prompts recently sent to each replica, and how much of a new prompt each holds."""

    def __init__(self, per_replica: int = DEFAULT_MEMORY) -> None:
        self.per_replica = per_replica
        self._prompts: dict[Any, deque[list[int]]] = {}

    def add(self, replica: Any, tokens: Sequence[int]) -> None:
        if tokens:
            held = self._prompts.setdefault(replica, deque(maxlen=self.per_replica))
            held.append(list(tokens))

    def longest(self, replica: Any, tokens: Sequence[int]) -> int:
        """The longest common prefix of ``tokens`` with a prompt ``replica`` was sent."""
        wanted = list(tokens)
        return max(
            (len(os.path.commonprefix([p, wanted])) for p in self._prompts.get(replica, ())),
            default=0,
        )

    def forget(self, replica: Any) -> None:
        self._prompts.pop(replica, None)


class PrefixAffinityRouter(RequestRouter):
    """Prefix affinity, then least loaded (see the module doc). Options (the deployment's
    ``request_router_kwargs``): ``slots`` per replica, ``affinity``, ``memory``."""

    def initialize_state(
        self,
        slots: int = 4,
        affinity: float = DEFAULT_AFFINITY,
        memory: int = DEFAULT_MEMORY,
        **kwargs: Any,
    ) -> None:
        self._slots = slots
        self._affinity = affinity
        self._memory = PrefixMemory(memory)
        self._inflight: dict[ReplicaID, int] = {}
        # ranked but not yet routed (requests routed at the same moment must see each other)
        self._tentative: dict[str, ReplicaID] = {}
        self._last_pick: dict[ReplicaID, int] = {}
        self._picks = 0

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        tokens = prompt_of(pending_request)
        ranked = self.rank(candidate_replicas, tokens)
        if pending_request is not None:
            if len(self._tentative) > 4096:  # requests cancelled before routing never report
                self._tentative.clear()
            self._tentative[pending_request.metadata.internal_request_id] = ranked[0].replica_id
        return [[r] for r in ranked]

    def _load(self, replica: ReplicaID) -> int:
        tentative = sum(1 for r in self._tentative.values() if r == replica)
        return self._inflight.get(replica, 0) + tentative

    def rank(self, replicas: list[RunningReplica], tokens: Sequence[int]) -> list[RunningReplica]:
        """``replicas`` best first: :func:`choose_replica`'s pick, then by free slots."""
        loads = [
            ReplicaLoad(
                free_slots=self._slots - self._load(r.replica_id),
                cached_prefix=self._memory.longest(r.replica_id, tokens),
                last_pick=self._last_pick.get(r.replica_id, 0),
            )
            for r in replicas
        ]
        first = choose_replica(loads, prompt_tokens=len(tokens), affinity=self._affinity)
        rest = sorted(
            (i for i in range(len(replicas)) if i != first),
            key=lambda i: (-loads[i].free_slots, loads[i].last_pick, i),
        )
        return [replicas[i] for i in [first, *rest]]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        metadata = getattr(pending_request, "metadata", None)
        if metadata is not None:
            self._tentative.pop(metadata.internal_request_id, None)
        self._picks += 1
        self._last_pick[replica_id] = self._picks
        self._inflight[replica_id] = self._inflight.get(replica_id, 0) + 1
        self._memory.add(replica_id, prompt_of(pending_request))

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        left = self._inflight.get(replica_id, 0) - 1
        if left > 0:
            self._inflight[replica_id] = left
        else:
            self._inflight.pop(replica_id, None)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        # a restarted replica comes back with an empty cache and no requests
        self._memory.forget(replica_id)
        self._inflight.pop(replica_id, None)
