"""Replicas: the routing policy, the replica set over stand-in engines, the four GPU flags
(settings, env, config file, CLI), and end to end two CPU replicas of SmolLM2 behind a real
`ggufworker serve`, through the `openai` client."""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from ggufworker.engine.handle import EngineStats
from ggufworker.engine.types import GenerationRequest, SamplingParams
from ggufworker.errors import EngineClosedError, InvalidRequestError
from ggufworker.server.core.replicas import (
    Replica,
    ReplicaLoad,
    ReplicaSet,
    choose_replica,
    replica_stats,
)
from ggufworker.settings_flags import add_settings_arguments, settings_from_args
from ggufworker.settings_sources import resolve_settings
from tests.conftest import REPO, SMOLLM2
from tests.engine.prompts import PROMPTS as BATCH_SAFE_PROMPTS
from tests.server.conftest import ServerProcess, cached_server, running

# --- routing policy ---------------------------------------------------------------------------


def test_most_free_slots_wins() -> None:
    loads = [ReplicaLoad(1), ReplicaLoad(3), ReplicaLoad(2)]
    assert choose_replica(loads, prompt_tokens=10) == 1


def test_ties_go_to_the_least_recently_chosen() -> None:
    loads = [ReplicaLoad(2, last_pick=5), ReplicaLoad(2, last_pick=4), ReplicaLoad(2, last_pick=6)]
    assert choose_replica(loads, prompt_tokens=10) == 1
    never = [ReplicaLoad(2, last_pick=1), ReplicaLoad(2, last_pick=0)]
    assert choose_replica(never, prompt_tokens=10) == 1


def test_prefix_affinity_beats_free_slots() -> None:
    loads = [ReplicaLoad(4, cached_prefix=0), ReplicaLoad(1, cached_prefix=80)]
    assert choose_replica(loads, prompt_tokens=100) == 1


def test_affinity_needs_a_free_slot() -> None:
    loads = [ReplicaLoad(4, cached_prefix=0), ReplicaLoad(0, cached_prefix=99)]
    assert choose_replica(loads, prompt_tokens=100) == 0


def test_short_shared_prefix_does_not_pull() -> None:
    """A cached prefix under the affinity share (a common system prompt) leaves the choice to
    the load, so one replica does not take every request that shares it."""
    loads = [ReplicaLoad(1, cached_prefix=20), ReplicaLoad(3, cached_prefix=0)]
    assert choose_replica(loads, prompt_tokens=100) == 1
    assert choose_replica(loads, prompt_tokens=100, affinity=0.1) == 0


def test_replicas_with_the_same_prefix_share_by_load() -> None:
    loads = [ReplicaLoad(1, 60), ReplicaLoad(2, 60), ReplicaLoad(4, 10)]
    assert choose_replica(loads, prompt_tokens=100) == 1


def test_all_full_goes_to_the_shortest_queue() -> None:
    loads = [ReplicaLoad(-3, cached_prefix=50), ReplicaLoad(-1), ReplicaLoad(-2)]
    assert choose_replica(loads, prompt_tokens=60) == 1


def test_no_replicas() -> None:
    with pytest.raises(ValueError):
        choose_replica([], prompt_tokens=1)


# --- the replica set over stand-in engines ------------------------------------------------------


@dataclass
class _Info:
    name: str = "stub"
    n_parallel: int = 2
    backend: str = "cpu"


@dataclass
class StubEngine:
    """Tokens are characters; it records what it was given and holds given cached prefixes."""

    slots: int = 2
    busy: int = 0
    alive: bool = True
    held: list[list[int]] = field(default_factory=list)
    got: list[GenerationRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.info = _Info(n_parallel=self.slots)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False):
        return ([1] if add_special else []) + [ord(c) for c in text]

    def cached_prefix(self, tokens: list[int]) -> int:
        best = 0
        for held in self.held:
            n = 0
            while n < min(len(held), len(tokens)) and held[n] == tokens[n]:
                n += 1
            best = max(best, n)
        return best

    def submit(self, request: GenerationRequest) -> str:
        self.got.append(request)
        self.busy += 1
        return f"handle-{len(self.got)}"

    def stats(self) -> EngineStats:
        busy = min(self.busy, self.slots)
        return EngineStats(
            n_parallel=self.slots,
            busy_slots=busy,
            queue_depth=self.busy - busy,
            max_queue=8,
            total_prompt_tokens=0,
            total_generated_tokens=0,
            total_cached_tokens=3 * len(self.got),
            total_requests=len(self.got),
        )

    def close(self) -> None:
        self.closed = True


def _set(*engines: StubEngine) -> ReplicaSet:
    return ReplicaSet([Replica(i, f"dev{i}", e) for i, e in enumerate(engines)])  # type: ignore[arg-type]


def test_replica_set_spreads_and_follows_prefixes() -> None:
    a, b = StubEngine(), StubEngine()
    replicas = _set(a, b)
    assert replicas.info.n_parallel == 4
    for text in ("one", "two", "three", "four"):
        replicas.submit(GenerationRequest(prompt=text, params=SamplingParams()))
    assert [len(a.got), len(b.got)] == [2, 2]  # alternating while loads are even
    # the replica is handed token ids, tokenized once with the request's flags
    assert a.got[0].prompt == [1, *map(ord, "one")]
    a.busy = b.busy = 0
    b.held = [[1, *map(ord, "a long conversation so far")]]
    replicas.submit(GenerationRequest(prompt="a long conversation so far, and more"))
    assert len(b.got) == 3
    replicas.submit(GenerationRequest(prompt="unrelated", add_bos=False))
    assert len(a.got) == 3 and a.got[-1].prompt == list(map(ord, "unrelated"))


def test_stopped_replicas_take_no_requests() -> None:
    a, b = StubEngine(), StubEngine()
    replicas = _set(a, b)
    a.alive = False  # its scheduler thread died
    for text in ("one", "two", "three"):
        replicas.submit(GenerationRequest(prompt=text))
    assert (len(a.got), len(b.got)) == (0, 3) and replicas.alive
    assert [r.alive for r in replica_stats(replicas)] == [False, True]
    b.alive = False
    assert not replicas.alive
    with pytest.raises(EngineClosedError):
        replicas.submit(GenerationRequest(prompt="four"))


def test_replica_set_stats_add_up() -> None:
    a, b = StubEngine(slots=2, busy=3), StubEngine(slots=4, busy=1)
    replicas = _set(a, b)
    total = replicas.stats()
    assert (total.n_parallel, total.busy_slots, total.queue_depth) == (6, 3, 1)
    per = replica_stats(replicas)
    assert [(r.index, r.device, r.slots, r.busy_slots, r.queue_depth) for r in per] == [
        (0, "dev0", 2, 2, 1),
        (1, "dev1", 4, 1, 0),
    ]
    assert [r.index for r in replica_stats(a)] == [0]  # a plain engine is one replica
    replicas.close()
    assert a.closed and b.closed


# --- the four flags -----------------------------------------------------------------------------


def _parse(*argv: str):
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_flags_env_and_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = resolve_settings({})
    assert (s.split_mode, s.tensor_split, s.main_gpu, s.replicas) == (None, [], None, 1)
    s = _parse("--split-mode", "row", "--tensor-split", "3,1", "--main-gpu", "1", "--replicas", "2")
    assert (s.split_mode, s.tensor_split, s.main_gpu, s.replicas) == ("row", [3.0, 1.0], 1, 2)
    assert _parse("--tensor-split", "3", "--tensor-split", "1").tensor_split == [3.0, 1.0]
    cfg = tmp_path / "gpus.toml"
    cfg.write_text('split-mode = "layer"\ntensor-split = [1, 2]\nreplicas = 3\n')
    s = resolve_settings({}, config_file=cfg)
    assert (s.split_mode, s.tensor_split, s.replicas) == ("layer", [1.0, 2.0], 3)
    monkeypatch.setenv("GGUFWORKER_TENSOR_SPLIT", "0.5,0.25,0.25")
    monkeypatch.setenv("GGUFWORKER_MAIN_GPU", "2")
    monkeypatch.setenv("GGUFWORKER_SPLIT_MODE", "none")
    s = resolve_settings({"replicas": 4}, config_file=cfg)
    assert (s.split_mode, s.tensor_split, s.main_gpu, s.replicas) == (
        "none",
        [0.5, 0.25, 0.25],
        2,
        4,
    )


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"tensor_split": "3,x"}, "--tensor-split"),
        ({"tensor_split": "0,0"}, "--tensor-split"),
        ({"tensor_split": "-1,2"}, "--tensor-split"),
        ({"split_mode": "diagonal"}, "--split-mode"),
        ({"main_gpu": -1}, "--main-gpu"),
        ({"replicas": 0}, "--replicas"),
    ],
)
def test_bad_values_name_the_flag(values: dict, flag: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        resolve_settings(values)
    assert flag in str(info.value) and "\n" not in str(info.value)


def _serve(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ggufworker", "serve", "--offline", "--no-preload", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_cli_names_missing_gpus_in_one_line() -> None:
    """The GPU flags are checked against the GPUs llama.cpp sees before the server starts."""
    from ggufworker.engine.devices import gpu_devices

    missing = len(gpu_devices())  # the first index that is not there, on any machine
    done = _serve("--main-gpu", str(max(missing, 1)), "--tensor-split", "1," * missing + "1")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--main-gpu" in lines[0] and "GPU" in lines[0], done.stderr
    done = _serve("--tensor-split", ",".join(["1"] * (missing + 1)))
    assert done.returncode == 1 and "--tensor-split" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = _serve("--replicas", "0")
    assert done.returncode == 1 and "--replicas" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# --- end to end: two CPU replicas of SmolLM2 ----------------------------------------------------

GREEDY = {"temperature": 0, "max_tokens": 24, "extra_body": {"ignore_eos": True}}
CHAT = {"temperature": 0, "max_tokens": 24}
# CPU replicas on any machine (on a GPU host two replicas would each need a GPU)
CPU = ("--gpu-layers", "0")
# Prompts whose greedy tokens are known to be the same batched or alone on the CPU (the
# engine's batched-vs-alone tests); each replica batches two of them.
PROMPTS = BATCH_SAFE_PROMPTS[:4]


@pytest.fixture(scope="module")
def two_replicas(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = cached_server(
        tmp_path_factory, "two-replicas", model_cache, "--model", SMOLLM2,
        "--replicas", "2", "--parallel", "2", *CPU,
    )  # fmt: skip
    with running(server):
        yield server


@pytest.fixture(scope="module")
def one_replica(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = cached_server(
        tmp_path_factory, "one-replica", model_cache, "--model", SMOLLM2, "--parallel", "2", *CPU
    )
    with running(server):
        yield server


def _client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def _replica_counts(server: ServerProcess, metric: str = "requests_total") -> dict[int, float]:
    text = httpx.get(f"{server.url}/metrics").text
    pattern = rf"^ggufworker_replica_{metric}\{{([^}}]*)\}} ([0-9.e+]+)$"
    out = {}
    for labels, value in re.findall(pattern, text, flags=re.M):
        if f'model="{SMOLLM2}"' in labels:
            out[int(re.search(r'replica="(\d+)"', labels).group(1))] = float(value)
    return out


@pytest.mark.slow
def test_concurrent_requests_spread_and_match_one_replica(
    two_replicas: ServerProcess, one_replica: ServerProcess
) -> None:
    async def together() -> list[str]:
        client = AsyncOpenAI(base_url=f"{two_replicas.url}/v1", api_key="none", max_retries=0)
        replies = await asyncio.gather(
            *[client.completions.create(model=SMOLLM2, prompt=p, **GREEDY) for p in PROMPTS]
        )
        await client.close()
        return [r.choices[0].text for r in replies]

    spread = asyncio.run(together())
    counts = _replica_counts(two_replicas)
    assert set(counts) == {0, 1} and sum(counts.values()) == len(PROMPTS)
    assert min(counts.values()) >= 1, f"requests not spread over both replicas: {counts}"
    single = _client(one_replica)
    alone = [single.completions.create(model=SMOLLM2, prompt=p, **GREEDY) for p in PROMPTS]
    assert all(r.usage.completion_tokens == 24 for r in alone)
    for prompt, a, b in zip(PROMPTS, alone, spread, strict=True):
        assert b == a.choices[0].text, f"two replicas answer {prompt!r} differently"
    card = next(m for m in httpx.get(f"{two_replicas.url}/v1/models").json()["data"]
                if m["id"] == SMOLLM2)  # fmt: skip
    assert [(r["index"], r["device"], r["slots"]) for r in card["meta"]["replicas"]] == [
        (0, "cpu", 2),
        (1, "cpu", 2),
    ]


@pytest.mark.slow
def test_follow_up_turn_goes_to_the_replica_holding_its_prefix(two_replicas: ServerProcess) -> None:
    client = _client(two_replicas)
    messages = [
        {"role": "system", "content": "You answer in one short sentence about geography."},
        {"role": "user", "content": "Which river flows through Vienna, Budapest and Belgrade?"},
    ]
    before = _replica_counts(two_replicas)
    first = client.chat.completions.create(model=SMOLLM2, messages=messages, **CHAT)
    after = _replica_counts(two_replicas)
    served = [i for i in after if after[i] > before.get(i, 0)]
    assert len(served) == 1
    # The load policy alone would now pick the other replica (it was chosen less recently);
    # the follow-up must go where the first turn's KV cache is.
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And which sea does it flow into?"},
    ]
    cached_before = _replica_counts(two_replicas, "cached_tokens_total")
    second = client.chat.completions.create(model=SMOLLM2, messages=messages, **CHAT)
    final = _replica_counts(two_replicas)
    assert [i for i in final if final[i] > after[i]] == served
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens, (cached, first.usage.prompt_tokens)
    cached_after = _replica_counts(two_replicas, "cached_tokens_total")
    assert cached_after[served[0]] - cached_before[served[0]] == cached


@pytest.mark.requires_hardware("two GPUs")
def test_one_replica_per_gpu(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from ggufworker.engine.devices import gpu_devices

    gpus = gpu_devices()
    if len(gpus) < 2:
        pytest.skip(f"needs two GPUs, this machine has {len(gpus)}")
    server = cached_server(
        tmp_path_factory, "gpu-replicas", model_cache, "--model", SMOLLM2,
        "--replicas", "2", "--parallel", "2",
    )  # fmt: skip
    with running(server):

        async def together() -> list[int]:
            client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
            replies = await asyncio.gather(
                *[client.completions.create(model=SMOLLM2, prompt=p, **GREEDY) for p in PROMPTS]
            )
            await client.close()
            return [r.usage.completion_tokens for r in replies]

        assert asyncio.run(together()) == [24] * len(PROMPTS)
        counts = _replica_counts(server)
        assert sorted(counts) == [0, 1] and min(counts.values()) >= 1, counts
        card = next(m for m in httpx.get(f"{server.url}/v1/models").json()["data"]
                    if m["id"] == SMOLLM2)  # fmt: skip
        assert [r["device"] for r in card["meta"]["replicas"]] == [gpus[0].name, gpus[1].name]
