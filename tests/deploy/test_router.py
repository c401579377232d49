"""The Ray request router's ranking (ggufworker.deploy.router) without a cluster: the same
policy as ``--replicas`` (prefix affinity, then free slots, then least recently picked)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ggufworker.deploy.router import PrefixAffinityRouter, PrefixMemory, prompt_of
from ggufworker.engine.types import GenerationRequest


@dataclass(frozen=True)
class _Replica:
    replica_id: str


@dataclass
class _Metadata:
    internal_request_id: str = "r"


@dataclass
class _Pending:
    args: list[Any]
    metadata: _Metadata = field(default_factory=_Metadata)


def _router(slots: int = 2) -> PrefixAffinityRouter:
    router = PrefixAffinityRouter.__new__(PrefixAffinityRouter)  # no Serve machinery needed
    router.initialize_state(slots=slots, affinity=0.5, memory=4)
    return router


def _routed(router: PrefixAffinityRouter, replica: _Replica, tokens: list[int]) -> None:
    pending = _Pending([GenerationRequest(prompt=tokens)])
    router.on_request_routed(pending, replica.replica_id, None)  # type: ignore[arg-type]


def test_prefix_memory_finds_the_longest_shared_prefix() -> None:
    memory = PrefixMemory(per_replica=2)
    memory.add("a", [1, 2, 3, 4])
    memory.add("a", [1, 2, 9])
    assert memory.longest("a", [1, 2, 3, 7]) == 3
    assert memory.longest("b", [1, 2, 3]) == 0
    memory.add("a", [5])
    memory.add("a", [6])  # only the two most recent prompts are kept
    assert memory.longest("a", [1, 2, 3]) == 0


def test_prompt_of_reads_token_ids_only() -> None:
    assert prompt_of(_Pending([GenerationRequest(prompt=[4, 5])])) == [4, 5]  # type: ignore[arg-type]
    assert prompt_of(_Pending([GenerationRequest(prompt="text")])) == []  # type: ignore[arg-type]
    assert prompt_of(_Pending(["facts"])) == []  # type: ignore[arg-type]
    assert prompt_of(None) == []


def test_least_loaded_then_least_recently_picked() -> None:
    a, b = _Replica("a"), _Replica("b")
    router = _router()
    first = router.rank([a, b], [1, 2, 3])[0]  # type: ignore[list-item]
    _routed(router, first, [1, 2, 3])
    other = b if first is a else a
    # distinct prompt: the replica with more free slots comes first
    assert router.rank([a, b], [7, 8, 9]) == [other, first]  # type: ignore[list-item]
    router.on_request_completed(first.replica_id, "r1")  # type: ignore[arg-type]
    # equal load again: the one picked least recently
    assert router.rank([a, b], [7, 8, 9])[0] == other  # type: ignore[list-item]


def test_shared_prefix_wins_while_its_replica_has_a_free_slot() -> None:
    a, b = _Replica("a"), _Replica("b")
    router = _router(slots=2)
    prefix = list(range(100))
    _routed(router, a, [*prefix, 1])
    router.on_request_completed("a", "r1")  # type: ignore[arg-type]
    assert router.rank([a, b], [*prefix, 2])[0] == a  # type: ignore[list-item]
    # a short shared start (under half the prompt) does not pull the request
    assert router.rank([a, b], [*prefix[:10], *range(500, 600)])[0] == b  # type: ignore[list-item]
    # a's slots full: the prefix no longer wins
    _routed(router, a, [*prefix, 3])
    _routed(router, a, [*prefix, 4])
    assert router.rank([a, b], [*prefix, 5])[0] == b  # type: ignore[list-item]
    # a dead replica's memory and load are forgotten
    router._memory.forget("a")
    assert router._memory.longest("a", prefix) == 0


def test_requests_ranked_together_spread() -> None:
    """Two requests ranked before either is routed: the second sees the first's pick."""
    a, b = _Replica("a"), _Replica("b")
    router = _router(slots=2)

    async def choose(rid: str) -> Any:
        pending = _Pending([GenerationRequest(prompt=[int(rid)])], _Metadata(rid))
        return (await router.choose_replicas([a, b], pending))[0][0]  # type: ignore[list-item, arg-type]

    assert asyncio.run(choose("1")) != asyncio.run(choose("2"))
