"""Recurrent (Mamba) and hybrid (LFM2) models in the engine: batching and extend-or-restart reuse.

A sequence of these models keeps a fixed-size state, not a KV row per token, so a cached prefix
can only be extended, never cut back (docs/ENGINE.md). The checks: eight prompts batched give
what each gives alone through llama.cpp's own decode loop; a prompt that extends an idle slot's
state reuses it and matches a cold run; a prompt that leaves the state's tokens mid-way restarts
the sequence (nothing cached) and also matches a cold run. Tiny seeded random models, converted
here from transformers' own classes, keep it fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from converters.st2gguf import convert
from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.engine.model import Model
from ggufworker.engine.reference import raw_greedy
from tests.converters import builders
from tests.support import record

N_GEN = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=N_GEN, ignore_eos=True)


def _configs() -> dict[str, object]:
    import transformers as tf

    return {
        "mamba": tf.MambaConfig(
            hidden_size=64, intermediate_size=128, state_size=16, num_hidden_layers=2,
            conv_kernel=4, time_step_rank=4,
        ),
        "lfm2": tf.Lfm2Config(
            hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, block_multiple_of=16,
            layer_types=["conv", "full_attention", "conv", "full_attention"],
        ),
    }  # fmt: skip


MEMORY = {"mamba": "recurrent", "lfm2": "hybrid"}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tok = builders.train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    out = {}
    for name, config in _configs().items():
        src = builders.build_tiny(name, tmp_path_factory.mktemp(name), tok, config=config)
        out[name] = convert(src, src / "model.f32.gguf", outtype="f32", pre_tokenizer="gpt-2")
    return out


@pytest.fixture(scope="module", params=list(MEMORY))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def engine(family: str, tiny_gguf: dict[str, Path]) -> Iterator[Engine]:
    eng = Engine.load(tiny_gguf[family], n_ctx=1024, n_parallel=8, n_batch=256, n_threads=2)
    yield eng
    eng.close()


def _prompts() -> list[list[int]]:
    rng = np.random.default_rng(11)
    return [rng.integers(3, 384, size=int(n)).tolist() for n in (5, 9, 14, 20, 27, 33, 40, 48)]


def _run(engine: Engine, prompt: list[int]) -> tuple[list[int], int]:
    done = engine.generate(GenerationRequest(prompt, GREEDY))
    return done.token_ids, done.usage.cached_tokens


def test_memory_kind_is_reported(engine: Engine, family: str) -> None:
    assert engine.info.memory == MEMORY[family]


def test_batched_equals_alone(engine: Engine, family: str, tiny_gguf: dict[str, Path]) -> None:
    prompts = _prompts()
    engine.clear_cache()
    handles = [engine.submit(GenerationRequest(p, GREEDY)) for p in prompts]
    together = [[e.token_id for e in h if e.token_id is not None] for h in handles]
    model = Model(tiny_gguf[family])
    try:  # llama.cpp's own loop, each prompt alone in a fresh state
        ref = raw_greedy(model, prompts, N_GEN, together=False).tokens
    finally:
        model.close()
    same = sum(a == b for a, b in zip(together, ref, strict=True))
    record(family, "engine", passed=same == len(prompts), detail=f"{same}/8 batched == alone")
    assert len({tuple(t) for t in ref}) > 1, "the reference outputs do not depend on the prompt"
    assert together == ref


def test_extending_an_idle_state_matches_cold(engine: Engine) -> None:
    first = _prompts()[6]
    engine.clear_cache()
    gen, cached = _run(engine, first)
    assert cached == 0
    # The slot's state consumed the prompt and all generated tokens but the last.
    second = first + gen + [7, 8, 9, 10, 11]
    warm, warm_cached = _run(engine, second)
    engine.clear_cache()
    cold, cold_cached = _run(engine, second)
    assert warm_cached == len(first) + len(gen) - 1
    assert cold_cached == 0
    assert warm == cold


def test_diverging_prompt_restarts(engine: Engine) -> None:
    first = _prompts()[7]
    engine.clear_cache()
    gen, _ = _run(engine, first)
    # Same first 30 tokens as the idle state, then other tokens: the state cannot be cut back
    # to 30 tokens, so the sequence must start over.
    diverging = first[:30] + [5, 6, 7, 8, 9, 10]
    warm, warm_cached = _run(engine, diverging)
    # It started over in another slot: the first state is still there to be extended.
    _, kept = _run(engine, first + gen + [12, 13])
    engine.clear_cache()
    cold, _ = _run(engine, diverging)
    assert warm_cached == 0
    assert warm == cold
    assert kept == len(first) + len(gen) - 1


def test_same_prompt_again_resumes_from_a_checkpoint(engine: Engine) -> None:
    """A repeated prompt needs its last position's logits again, which a consumed state no
    longer has: it resumes from the checkpoint taken 4 tokens before the prompt's end
    (engine/cache_tiers.py) and gives the same tokens."""
    prompt = _prompts()[5]
    engine.clear_cache()
    a, _ = _run(engine, prompt)
    b, b_cached = _run(engine, prompt)
    assert b_cached == len(prompt) - 4
    assert a == b


def test_speculation_requested_still_answers_correctly(
    family: str, tiny_gguf: dict[str, Path]
) -> None:
    """Rejected drafts cannot be cut out of a recurrent state: the engine turns speculation
    off for these models and answers as without it."""
    from ggufworker.engine.speculation import SpeculationOptions

    prompts = _prompts()[:4]
    spec = SpeculationOptions(mode="ngram", adaptive=False)
    eng = Engine.load(tiny_gguf[family], n_ctx=1024, n_parallel=4, n_batch=256, speculation=spec)
    try:
        # prompts that repeat themselves, so prompt lookup would find drafts
        handles = [eng.submit(GenerationRequest(p + p, GREEDY)) for p in prompts]
        got = [[e.token_id for e in h if e.token_id is not None] for h in handles]
        assert not eng._sched.spec_on
        assert eng.stats().spec_draft_tokens == 0
    finally:
        eng.close()
    model = Model(tiny_gguf[family])
    try:
        ref = raw_greedy(model, [p + p for p in prompts], N_GEN, together=False).tokens
    finally:
        model.close()
    assert got == ref
