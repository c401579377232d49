"""Speculative decoding in the engine: output equal to output without it, drafts really used.

The reference for every check is the same engine code without speculation on the same real
model (SmolLM2), each reference request run cold (no cached prefix): greedy output token for
token, seeded sampled output token for token (every emitted token is the target's own draw with
one uniform per token, so a seeded request draws the same tokens; equal draws for every seed
imply equal distributions), a batch of eight mixed speculating and non-speculating requests
equal to each alone, and a follow-up request that shares the prefix of a speculating one
unaffected by its rejected drafts. Accepted drafts put their KV in the cache from one
multi-token decode where plain decoding writes it one token per step, and ggml's kernels round
by batch shape, so greedy outputs are compared with the project's near-tie rule
(tests/engine/agree.py: equal, or parted where the reference's two best tokens nearly tie); the
tests count the exact matches and require most of them. Each test also checks from the engine's
counters that drafts were verified and accepted, so it cannot pass with speculation silently off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.engine._native import llama_cpp
from ggufworker.engine.speculation import (
    NgramIndex,
    SlotSpec,
    SpecPlanner,
    SpeculationOptions,
    spec_mode,
)
from tests.engine.agree import assert_greedy_agree

LIST = "\n".join(
    f"{i}. {w}" for i, w in enumerate(
        "apples bread carrots dates eggs flour grapes honey"
        " ice-cream jam kale lemons milk noodles".split(), 1
    )
)  # fmt: skip
CODE = (
    "def area(width, height):\n    return width * height\n\n"
    "def perimeter(width, height):\n    return 2 * (width + height)\n\n"
    "def volume(width, height, depth):\n    return width * height * depth\n"
)
COPY_PROMPTS = [
    f"Repeat this shopping list exactly:\n{LIST}",
    f"Rewrite this code with the function `area` renamed to `surface`:\n{CODE}",
    f"Copy this text:\n{CODE}",
    "Write the numbers from 1 to 30 separated by commas.",
]
FREE_PROMPTS = ["Tell me a short story about a fox.", "What is the capital of Italy?"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=96)


def _chat(engine: Engine, text: str) -> str:
    return engine.render_chat([{"role": "user", "content": text}])


def _req(engine: Engine, text: str, params: SamplingParams = GREEDY) -> GenerationRequest:
    return GenerationRequest(_chat(engine, text), params, parse_special=True)


@pytest.fixture(scope="module")
def ngram(smollm2_path: Path) -> Iterator[Engine]:
    engine = Engine.load(
        smollm2_path, n_ctx=4096, n_parallel=8, n_batch=512,
        speculation=SpeculationOptions(mode="ngram", adaptive=False, n_max=8),
    )  # fmt: skip
    yield engine
    engine.close()


def _ids(engine: Engine, req: GenerationRequest) -> list[int]:
    """The request's tokens from a cold run (no prefix of it cached)."""
    engine.clear_cache()
    return engine.generate(req).token_ids


def _agree(engine: Engine, req: GenerationRequest, ref: list[int], got: list[int]) -> bool:
    prompt = engine.tokenize(str(req.prompt), parse_special=True)
    return assert_greedy_agree(engine, prompt, ref, got, str(req.prompt)[-40:], exact=False)


# --- pure logic -----------------------------------------------------------------------------


def test_ngram_lookup_drafts_what_followed_the_latest_match() -> None:
    index = NgramIndex((3, 2))
    index.extend([1, 2, 3, 4, 5, 6, 1, 2])
    # the sequence is the history plus the last token: ... 1, 2, 3 -> (1, 2, 3) at 0..2
    assert index.lookup(3, 3) == [4, 5, 6]
    index.extend([1, 2, 3, 4, 5, 6, 1, 2, 3, 9, 5])
    # no 3-gram (9, 5, 6) before; the 2-gram (5, 6) ended at 5: what followed it
    assert index.lookup(6, 2) == [1, 2]
    assert index.lookup(42, 4) == []


def test_spec_type_names_follow_llama_server() -> None:
    assert spec_mode("ngram-simple") == "ngram"
    assert spec_mode("draft-simple") == "draft"
    with pytest.raises(ValueError, match="unknown speculation type"):
        spec_mode("eagle9")


def test_planner_drafts_when_it_pays_and_stops_under_load() -> None:
    planner = SpecPlanner(SpeculationOptions(mode="ngram", n_max=8, beta=0.3), gpu=False)
    good, bad = SlotSpec(), SlotSpec()
    for _ in range(10):
        good.record(8, 8)
        bad.record(8, 0)
    alone = planner.plan(1, [(good, 8)])
    assert alone[0] >= 4  # a copying stream gets long drafts
    assert planner.plan(1, [(bad, 8)]) == [0]  # a stream whose drafts fail gets none
    # the same copying stream in a step of 64 sequences: its rows cost more than they add
    assert planner.plan(64, [(good, 8)])[0] < alone[0]
    assert planner.plan(64, [(SlotSpec(), 8)]) == [0]


def test_planner_probes_a_slot_that_stopped_drafting() -> None:
    planner = SpecPlanner(SpeculationOptions(mode="ngram", beta=0.5), gpu=False)
    bad = SlotSpec()
    for _ in range(10):
        bad.record(8, 0)
    plans = [planner.plan(1, [(bad, 8)])[0] for _ in range(SpecPlanner.PROBE_AFTER)]
    assert plans[:-1] == [0] * (SpecPlanner.PROBE_AFTER - 1) and plans[-1] == 1


def test_planner_fits_the_step_cost_from_timings() -> None:
    planner = SpecPlanner(SpeculationOptions(mode="ngram", beta=0.9), gpu=False)
    for n in [1, 2, 4, 8, 1, 3, 5, 9] * 4:
        planner.cost.observe(n, 0.010 + 0.001 * (n - 1))
    t1, beta = planner.cost.fit()
    assert t1 == pytest.approx(0.010, rel=1e-6)
    assert beta == pytest.approx(0.1, rel=1e-6)


# --- the engine -----------------------------------------------------------------------------


def test_greedy_ngram_output_equals_plain(ngram: Engine, smollm2: Engine) -> None:
    before = ngram.stats()
    exact = 0
    texts = COPY_PROMPTS + FREE_PROMPTS
    for text in texts:
        req = _req(ngram, text)
        exact += _agree(smollm2, req, _ids(smollm2, req), _ids(ngram, req))
    assert exact >= len(texts) - 1
    after = ngram.stats()
    assert after.spec_draft_tokens > before.spec_draft_tokens
    assert after.spec_accepted_tokens - before.spec_accepted_tokens >= 20
    assert after.spec_accepted_per_pos[0] >= after.spec_accepted_per_pos[-1]


def test_batch_of_eight_mixed_equals_alone(ngram: Engine, smollm2: Engine) -> None:
    texts = COPY_PROMPTS + FREE_PROMPTS + COPY_PROMPTS[:2]
    reqs = []
    for i, text in enumerate(texts):  # every other request turns speculation off
        params = SamplingParams(temperature=0.0, max_tokens=64, speculative=i % 2 == 0)
        reqs.append(_req(ngram, text, params))
    alone = [_ids(smollm2, r) for r in reqs]
    ngram.clear_cache()
    before = ngram.stats().spec_accepted_tokens
    handles = [ngram.submit(r) for r in reqs]
    together = [[e.token_id for e in h if e.token_id is not None] for h in handles]
    exact = sum(_agree(smollm2, r, a, t) for r, a, t in zip(reqs, alone, together, strict=True))
    assert exact >= len(reqs) - 1
    assert ngram.stats().spec_accepted_tokens > before


def test_seeded_sampling_draws_the_same_tokens(ngram: Engine, smollm2: Engine) -> None:
    before = ngram.stats().spec_accepted_tokens
    for seed in range(12):
        params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=48, seed=seed)
        text = COPY_PROMPTS[seed % 2]
        assert _ids(ngram, _req(ngram, text, params)) == _ids(smollm2, _req(smollm2, text, params))
    assert ngram.stats().spec_accepted_tokens > before


def test_rejected_drafts_leave_no_cells(ngram: Engine, smollm2: Engine) -> None:
    """After a speculating request the slot's KV holds exactly the tokens it says it holds,
    and a follow-up sharing its prefix (reusing that KV) equals a cold run."""
    ngram.clear_cache()
    smollm2.clear_cache()
    first = _req(ngram, COPY_PROMPTS[1])
    done = ngram.generate(first)
    sched = ngram._sched

    def held() -> list[tuple[int, int]]:
        return [
            (len(s.cache), int(llama_cpp.llama_memory_seq_pos_max(sched.mem, s.seq)) + 1)
            for s in sched.slots
            if s.cache
        ]

    for n_cache, n_kv in ngram.run_on_scheduler(held):
        assert n_cache == n_kv
    follow = GenerationRequest(
        first.prompt + ngram.detokenize(done.token_ids[:20]) + " and then",  # type: ignore[operator]
        GREEDY,
        parse_special=True,
    )
    warm = ngram.generate(follow)
    assert warm.usage.cached_tokens > 0
    _agree(smollm2, follow, _ids(smollm2, follow), warm.token_ids)


def test_draft_model_output_equals_plain(smollm2_path: Path, smollm2: Engine) -> None:
    """The target as its own draft: every draft accepted, output unchanged."""
    engine = Engine.load(
        smollm2_path, n_ctx=2048, n_parallel=4, n_batch=256,
        speculation=SpeculationOptions(
            mode="draft", draft_model=str(smollm2_path), adaptive=False, n_max=4
        ),
    )  # fmt: skip
    try:
        texts = [COPY_PROMPTS[0], FREE_PROMPTS[0], COPY_PROMPTS[3]]
        reqs = [_req(engine, t) for t in texts]
        handles = [engine.submit(r) for r in reqs]
        got = [[e.token_id for e in h if e.token_id is not None] for h in handles]
        exact = sum(_agree(smollm2, r, _ids(smollm2, r), g) for r, g in zip(reqs, got, strict=True))
        assert exact >= len(reqs) - 1
        stats = engine.stats()
        assert stats.spec_accepted_tokens >= 0.9 * stats.spec_draft_tokens > 0
    finally:
        engine.close()


def test_a_draft_with_another_vocabulary_is_refused(smollm2_path: Path, gemma3_path: Path) -> None:
    from ggufworker.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not share the vocabulary"):
        Engine.load(
            smollm2_path, n_ctx=512, n_parallel=1,
            speculation=SpeculationOptions(mode="draft", draft_model=str(gemma3_path)),
        )  # fmt: skip


def test_ngram_lookup_follows_the_copy_in_progress() -> None:
    """Code repeats n-grams: the latest occurrence of one may be another place than the one
    being copied; a copy goes on from where its last draft came from."""
    src = [1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 4, 5, 60, 61]  # (3, 4, 5) twice, last followed by 60
    index = NgramIndex((3, 2))
    index.extend(src + [1, 2])
    assert index.lookup(3, 2) == [4, 5]  # the copy of the first line starts at 2, 3
    index.extend(src + [1, 2, 3, 4])  # both drafts accepted
    # the latest (3, 4, 5) is followed by 60; the copy in progress by 6
    assert index.lookup(5, 3) == [6, 7, 8]
    index.extend(src + [1, 2, 3, 4, 5, 6])
    assert index.lookup(99, 2) == []  # the copy broke off and 99 was never seen


def test_probes_are_rarer_in_a_full_batch() -> None:
    planner = SpecPlanner(SpeculationOptions(mode="ngram", beta=0.02), gpu=True)
    slots = [SlotSpec() for _ in range(64)]
    for s in slots:
        for _ in range(10):
            s.record(8, 0)
    probes = sum(sum(planner.plan(64, [(s, 8) for s in slots])) for _ in range(64))
    assert probes <= 8  # one probe per slot every 16 * 64 plans: none in 64 steps
