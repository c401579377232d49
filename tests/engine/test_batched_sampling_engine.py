"""Sampled requests through the engine: drawn together in numpy, reproducible per seed.

A seeded sampled request draws one number per token from its own generator, so it gives the
same tokens alone and among other sampled requests (on the CPU, where these eight prompts have
the same logits batched and alone: tests/engine/test_batching.py), and the batched path is the
one that ran (no llama.cpp chain was built for it).
"""

from __future__ import annotations

from pathlib import Path

from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from tests.engine.agree import on_gpu
from tests.engine.prompts import PROMPTS

SAMPLED = SamplingParams(temperature=0.9, top_p=0.95, top_k=40, max_tokens=16, ignore_eos=True)


def _run(engine: Engine, prompts: list[str], seeds: list[int]) -> list[list[int]]:
    handles = [
        engine.submit(GenerationRequest(p, SamplingParams(**{**SAMPLED.__dict__, "seed": s})))
        for p, s in zip(prompts, seeds, strict=True)
    ]
    return [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]


def test_seeded_sampling_alone_equals_batched(smollm2_path: Path) -> None:
    engine = Engine.load(smollm2_path, n_ctx=2048, n_parallel=8)
    try:
        seeds = list(range(100, 100 + len(PROMPTS)))
        together = _run(engine, PROMPTS, seeds)
        alone = []
        for prompt, seed in zip(PROMPTS, seeds, strict=True):
            engine.clear_cache()
            alone += _run(engine, [prompt], [seed])
        assert all(len(t) == SAMPLED.max_tokens for t in together)
        if not on_gpu(engine):
            assert together == alone
        # sampling, not greedy: at temperature 0.9 some sequence leaves the argmax path
        engine.clear_cache()
        greedy = [
            engine.generate(
                GenerationRequest(p, SamplingParams(temperature=0.0, max_tokens=16))
            ).token_ids
            for p in PROMPTS
        ]
        assert any(g != a for g, a in zip(greedy, alone, strict=True))
        # other seeds draw other text for at least one prompt
        assert _run(engine, PROMPTS, [s + 7 for s in seeds]) != together
    finally:
        engine.close()


def test_sampled_requests_take_the_batched_path(smollm2: Engine) -> None:
    from ggufworker.engine.scheduler import Scheduler

    seen: list[int] = []
    original = Scheduler._sample_batched

    def spy(self, slots, logits, now):  # type: ignore[no-untyped-def]
        seen.append(len(slots))
        return original(self, slots, logits, now)

    Scheduler._sample_batched = spy  # type: ignore[method-assign]
    try:
        handles = [
            smollm2.submit(GenerationRequest(p, SamplingParams(**{**SAMPLED.__dict__, "seed": 1})))
            for p in PROMPTS[:4]
        ]
        for h in handles:
            assert len([ev for ev in h if ev.token_id is not None]) == SAMPLED.max_tokens
    finally:
        Scheduler._sample_batched = original  # type: ignore[method-assign]
    assert seen and max(seen) > 1, "sampled rows of one step were not drawn together"
