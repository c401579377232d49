"""Batched generation equals generation alone (the core promise of continuous batching)."""

from __future__ import annotations

from pathlib import Path

from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from tests.engine.agree import assert_greedy_agree
from tests.engine.prompts import PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def _alone(engine: Engine, prompts: list[str]) -> list[list[int]]:
    return [engine.generate(GenerationRequest(p, GREEDY)).token_ids for p in prompts]


def _together(engine: Engine, prompts: list[str]) -> list[list[int]]:
    handles = [engine.submit(GenerationRequest(p, GREEDY)) for p in prompts]
    return [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]


def test_smollm2_batched_equals_alone(smollm2_path: Path) -> None:
    # A fresh engine, so no prompt is served from another test's cached prefix.
    engine = Engine.load(smollm2_path, n_ctx=2048, n_parallel=8)
    try:
        together = _together(engine, PROMPTS)
        stats = engine.stats()
        alone = []
        for prompt in PROMPTS:
            engine.clear_cache()  # each prompt computed cold, not from the batched run's KV
            alone += _alone(engine, [prompt])
        assert stats.total_requests == len(PROMPTS)
        assert all(len(t) == GREEDY.max_tokens for t in together)
        for prompt, a, b in zip(PROMPTS, alone, together, strict=True):
            assert_greedy_agree(engine, engine.tokenize(prompt), a, b, f"batched {prompt!r}")
    finally:
        engine.close()
