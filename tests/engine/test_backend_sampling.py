"""Backend sampling: a request's llama.cpp chain runs inside the decode graph.

The reference is the same chain run on the host by ``llama_sampler_sample`` over the copied
logits (the engine's path with backend sampling off and batched sampling off). The backend's
``dist`` draws its uniform from the same seeded generator as the host's, so with the same
seeds both must give the same tokens, request by request, for every parameter the backend
offers: logit bias, penalties, top-k, top-p, min-p, temperature. Where the backend leaves the
candidates unsorted (top-k without top-p) the draws can only agree in distribution: a
two-sample chi-square test. Requests the backend cannot serve (grammars, logprobs) and greedy
requests share the steps and keep their own paths.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.engine.scheduler import Scheduler
from ggufworker.errors import InvalidRequestError
from tests.engine.prompts import PROMPTS
from tests.engine.stats import chi2_pvalue

N_TOKENS = 16


def _params(i: int) -> SamplingParams:
    """Eight requests covering the backend's samplers (one seed each). Each has a top-p below
    1: llama.cpp's backend top-p sorts the candidates, so a uniform picks the same token as
    on the host (its top-k alone leaves them in no particular order, see the last test)."""
    base = dict(max_tokens=N_TOKENS, ignore_eos=True, seed=1000 + i, temperature=0.8, top_p=0.95)
    extra: list[dict] = [
        dict(top_k=40, min_p=0.05),
        dict(top_p=0.9, top_k=0, min_p=0.0),  # top-p over the whole vocabulary
        dict(top_p=0.99, top_k=20, min_p=0.1),
        dict(temperature=1.3, top_k=40, min_p=0.05),
        dict(repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.2, repeat_last_n=32),
        dict(logit_bias={13: 5.0, 28: -100.0}),
        dict(top_p=0.5, top_k=100, min_p=0.0),
        dict(temperature=0.3),
    ]
    return SamplingParams(**{**base, **extra[i % len(extra)]})


def _tokens(engine: Engine, params: list[SamplingParams]) -> list[list[int]]:
    handles = [
        engine.submit(GenerationRequest(p, s))
        for p, s in zip(PROMPTS[: len(params)], params, strict=True)
    ]
    return [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]


@pytest.fixture
def attached(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sequence ids whose request got its chain into the graph."""
    seen: list[int] = []
    original = Scheduler._attach_sampler

    def spy(self, slot, req):  # type: ignore[no-untyped-def]
        original(self, slot, req)
        seen.append(req.attached)

    monkeypatch.setattr(Scheduler, "_attach_sampler", spy)
    return seen


def test_backend_draws_equal_the_host_chain(smollm2_path: Path, attached: list[int]) -> None:
    params = [_params(i) for i in range(len(PROMPTS))]
    host = Engine.load(smollm2_path, n_ctx=2048, n_parallel=8, backend_sampling="off")
    host.batched_sampling = False  # one llama.cpp chain per request, over the copied logits
    try:
        assert host.sampling == "host"
        reference = _tokens(host, params)
    finally:
        host.close()
    assert not attached
    engine = Engine.load(smollm2_path, n_ctx=2048, n_parallel=8, backend_sampling="on")
    try:
        assert engine.sampling == "backend"
        together = _tokens(engine, params)
        # a seeded request draws the same alone as among the others
        engine.clear_cache()
        alone = _tokens(engine, params[:1])
    finally:
        engine.close()
    assert len(attached) == len(PROMPTS) + 1 and min(attached) >= 0, "chains were not offloaded"
    assert all(len(t) == N_TOKENS for t in together)
    for i, (got, want) in enumerate(zip(together, reference, strict=True)):
        assert got == want, f"request {i} ({params[i]}) differs from the host chain"
    assert alone[0] == together[0]
    # sampling really happened: another seed draws another text for some request
    assert len({tuple(t) for t in together}) == len(PROMPTS)


def test_backend_sampling_shares_steps_with_other_paths(
    smollm2_path: Path, attached: list[int]
) -> None:
    """Greedy, grammar and logprobs requests keep their paths in steps with backend draws."""
    greedy = SamplingParams(temperature=0.0, max_tokens=N_TOKENS, ignore_eos=True)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    engine = Engine.load(smollm2_path, n_ctx=2048, n_parallel=8, backend_sampling="on")
    try:
        alone = engine.generate(GenerationRequest(PROMPTS[0], greedy)).token_ids
        engine.clear_cache()
        handles = [engine.submit(GenerationRequest(PROMPTS[0], greedy))]
        handles += [
            engine.submit(GenerationRequest(p, _params(i))) for i, p in enumerate(PROMPTS[1:5])
        ]
        grammar = engine.submit(
            GenerationRequest(
                "Reply in JSON with a number n.",
                SamplingParams(temperature=0.8, seed=3, max_tokens=48, json_schema=schema),
            )
        )
        logprobs = engine.submit(
            GenerationRequest(
                PROMPTS[5], SamplingParams(temperature=0.8, seed=4, max_tokens=8, logprobs=2)
            )
        )
        outs = [[ev for ev in h] for h in handles]
        g_events = list(grammar)
        lp_events = [ev for ev in logprobs if ev.token_id is not None]
    finally:
        engine.close()
    assert [ev.token_id for ev in outs[0] if ev.token_id is not None] == alone
    assert all(len([e for e in o if e.token_id is not None]) == N_TOKENS for o in outs[1:])
    assert isinstance(json.loads("".join(ev.text for ev in g_events))["n"], int)
    assert len(lp_events) == 8
    assert all(ev.logprob is not None and len(ev.top_logprobs) == 2 for ev in lp_events)
    # only the four plain sampled requests went into the graph
    assert len(attached) == 4 and min(attached) >= 0


def _first_tokens(engine: Engine, params: SamplingParams, seeds: range) -> Counter:
    prompt = "My favourite animal is the"
    handles = [
        engine.submit(GenerationRequest(prompt, SamplingParams(**{**params.__dict__, "seed": s})))
        for s in seeds
    ]
    return Counter(next(ev.token_id for ev in h if ev.token_id is not None) for h in handles)


def test_unsorted_backend_top_k_draws_the_host_distribution(smollm2_path: Path) -> None:
    params = SamplingParams(temperature=1.0, top_k=8, top_p=1.0, min_p=0.0, max_tokens=1)
    draws = 600
    host = Engine.load(
        smollm2_path, n_ctx=2048, n_parallel=8, backend_sampling="off", max_queue=draws
    )
    host.batched_sampling = False
    try:
        want = _first_tokens(host, params, range(draws))
    finally:
        host.close()
    engine = Engine.load(
        smollm2_path, n_ctx=2048, n_parallel=8, backend_sampling="on", max_queue=draws
    )
    try:
        got = _first_tokens(engine, params, range(draws, 2 * draws))
    finally:
        engine.close()
    # top-k 8 at temperature 1: several tokens, never more than eight
    assert len(want) > 2 and len(set(got) | set(want)) <= params.top_k
    assert chi2_pvalue(got, want) > 1e-3, (got, want)


def test_backend_sampling_flag_is_checked(smollm2_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="backend_sampling"):
        Engine.load(smollm2_path, backend_sampling="gpu")  # type: ignore[arg-type]


def test_a_slot_keeps_its_chain_for_the_same_parameters(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attaching re-plans llama.cpp's graph, so a slot's chain serves the next request with the
    same parameters, reset: the same seed then draws the same tokens again (penalty history
    cleared too), and an idle slot lets its chain go."""
    from ggufworker.engine import scheduler
    from ggufworker.engine._native import llama_cpp

    calls: list[bool] = []
    original = llama_cpp.llama_set_sampler

    def spy(ctx, seq, smpl):  # type: ignore[no-untyped-def]
        calls.append(smpl is not None)
        return original(ctx, seq, smpl)

    monkeypatch.setattr(llama_cpp, "llama_set_sampler", spy)
    engine = Engine.load(smollm2_path, n_ctx=1024, n_parallel=1, backend_sampling="on")
    try:
        penalised = _params(4)
        first = _tokens(engine, [penalised])
        again = _tokens(engine, [penalised])
        assert calls == [True]  # one attach for both requests
        other = _tokens(engine, [_params(0)])
        assert calls == [True, False, True]  # another key: detach, attach a new chain
        time.sleep(scheduler.CHAIN_IDLE_S * 4)
        assert calls == [True, False, True, False]  # detached while idle
    finally:
        engine.close()
    assert first == again and first != other
