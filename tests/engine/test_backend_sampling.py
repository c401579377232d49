"""Backend sampling: each sampled request's llama.cpp chain runs inside the decode graph.

Three modes, each checked against the host path it replaces, with the same seeds and so the
same tokens, request by request:

- "cut" (temperature > 0, top-k up to 64, no penalties, a bias only of bans): one cut of all
  such rows in the graph (engine/graph_cut.py) keeps each row's top 64, and the host adds the
  bias, keeps the row's top-k and draws with the request's numpy generator, exactly as the
  host's batched sampler (engine/batch_sampling.py) draws from its own top-k of the copied
  logits;
- "top-k" (the other requests with temperature > 0 and top-k on): the graph applies the
  request's logit bias, penalties and top-k to its row, and the host draws the same way;
- "chain" (top-k off, or greedy with penalties): the whole chain runs in the graph; its
  ``dist`` draws its uniform from the same seeded generator as the host chain's, and its
  top-p sorts the candidates, so it picks what ``llama_sampler_sample`` over the copied
  logits picks.

Requests the backend cannot serve (grammars, logprobs) and greedy requests share the steps
and keep their own paths.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.engine.scheduler import Scheduler
from ggufworker.errors import InvalidRequestError
from tests.engine.prompts import PROMPTS

N_TOKENS = 16


def _params(i: int) -> SamplingParams:
    """Eight requests covering the backend's samplers (one seed each)."""
    base = dict(max_tokens=N_TOKENS, ignore_eos=True, seed=1000 + i, temperature=0.8, top_p=0.95)
    extra: list[dict] = [
        dict(top_k=40, min_p=0.05),
        dict(top_p=0.9, top_k=0, min_p=0.0),  # "chain": top-p over the whole vocabulary
        dict(top_p=1.0, top_k=20, min_p=0.1),
        dict(temperature=1.3, top_k=40, min_p=0.05, logit_bias={13: -100.0, 28: -2.5}),
        dict(repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.2, repeat_last_n=32),
        dict(logit_bias={13: 5.0, 28: -100.0}),
        dict(top_p=0.5, top_k=100, min_p=0.0),
        dict(temperature=0.0, repeat_penalty=1.5),  # "chain": greedy with a penalty
    ]
    return SamplingParams(**{**base, **extra[i % len(extra)]})


def _tokens(engine: Engine, params: list[SamplingParams]) -> list[list[int]]:
    handles = [
        engine.submit(GenerationRequest(p, s))
        for p, s in zip(PROMPTS[: len(params)], params, strict=True)
    ]
    return [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]


@pytest.fixture
def modes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(sequence id, mode) of each request that got its chain into the graph."""
    seen: list[tuple[int, str]] = []
    original = Scheduler._attach_sampler

    def spy(self, slot, req):  # type: ignore[no-untyped-def]
        original(self, slot, req)
        seen.append((req.attached, req.backend))

    monkeypatch.setattr(Scheduler, "_attach_sampler", spy)
    return seen


def _host_tokens(path: Path, params: list[SamplingParams], *, chain: bool) -> list[list[int]]:
    engine = Engine.load(path, n_ctx=2048, n_parallel=8, backend_sampling="off")
    engine.batched_sampling = not chain  # chain: one llama.cpp chain per request on the host
    try:
        assert engine.sampling == "host"
        return _tokens(engine, params)
    finally:
        engine.close()


def test_backend_draws_equal_the_host_paths(
    smollm2_path: Path, modes: list[tuple[int, str]]
) -> None:
    params = [_params(i) for i in range(len(PROMPTS))]
    batched = _host_tokens(smollm2_path, params, chain=False)
    chained = _host_tokens(smollm2_path, params, chain=True)
    assert not modes
    engine = Engine.load(smollm2_path, n_ctx=2048, n_parallel=8, backend_sampling="on")
    try:
        assert engine.sampling == "backend"
        together = _tokens(engine, params)
        # a seeded request draws the same alone as among the others
        engine.clear_cache()
        alone = _tokens(engine, params[:1])
    finally:
        engine.close()
    assert len(modes) == len(PROMPTS) + 1 and min(modes)[0] >= 0, "chains were not offloaded"
    # bans only: the shared cut; a positive bias, penalties or top-k 100: the row's own top-k
    assert [m for _, m in modes[: len(PROMPTS)]] == ["cut", "chain", "cut", "cut"] + [
        "top-k"
    ] * 3 + ["chain"]
    assert all(len(t) == N_TOKENS for t in together)
    for i, got in enumerate(together):
        whole_chain = params[i].top_k == 0 or params[i].temperature <= 0
        want = chained[i] if whole_chain else batched[i]
        assert got == want, f"request {i} ({params[i]}) differs from the host"
    assert alone[0] == together[0]
    # sampling really happened: every request drew another text
    assert len({tuple(t) for t in together}) == len(PROMPTS)


def test_backend_sampling_shares_steps_with_other_paths(
    smollm2_path: Path, modes: list[tuple[int, str]]
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
    assert len(modes) == 4 and min(modes)[0] >= 0


def test_a_slot_drops_its_chain_for_a_request_without_one(smollm2_path: Path) -> None:
    """A greedy or grammar request in a slot that still holds a sampled request's chain: the
    chain is detached first (attached, llama.cpp would keep the sequence's logits in the graph
    and the greedy argmax would read rows it never copied)."""
    greedy = SamplingParams(temperature=0.0, max_tokens=N_TOKENS, ignore_eos=True)
    engine = Engine.load(smollm2_path, n_ctx=1024, n_parallel=1, backend_sampling="on")
    try:
        want = engine.generate(GenerationRequest(PROMPTS[2], greedy)).token_ids
        _tokens(engine, [_params(0)])  # leaves its chain attached to the only slot
        got = engine.generate(GenerationRequest(PROMPTS[2], greedy)).token_ids
        _tokens(engine, [_params(0)])
        lp = engine.generate(
            GenerationRequest(
                PROMPTS[3], SamplingParams(temperature=0.8, seed=5, max_tokens=4, logprobs=1)
            )
        )
    finally:
        engine.close()
    assert got == want
    assert lp.logprobs is not None and all(ev.logprob is not None for ev in lp.logprobs)


def test_backend_sampling_flag_is_checked(smollm2_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="backend_sampling"):
        Engine.load(smollm2_path, backend_sampling="gpu")  # type: ignore[arg-type]


def test_a_slot_keeps_its_chain_for_the_same_parameters(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attaching re-plans llama.cpp's graph, so a slot's chain serves the next request with the
    same parameters, reset: the same seed then draws the same tokens again (penalty history
    cleared too), and an idle slot lets its chain go."""
    from ggufworker.engine import backend_sampling
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
        hotter = _tokens(engine, [SamplingParams(**{**penalised.__dict__, "temperature": 1.5})])
        # one attach for the three: the graph's part (penalties, top-k) is the same
        assert calls == [True]
        assert hotter != first
        other = _tokens(engine, [_params(0)])
        assert calls == [True, False, True]  # another key: detach, attach a new chain
        time.sleep(backend_sampling.CHAIN_IDLE_S * 4)
        assert calls == [True, False, True, False]  # detached while idle
    finally:
        engine.close()
    assert first == again and first != other


def test_the_cut_pads_a_vocabulary_of_partial_blocks(
    smollm2_path: Path, modes: list[tuple[int, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vocabulary that is no whole number of blocks (SmolLM2's 49,152 in blocks of 700: 71
    blocks, the last one padded with logits that never win) cuts to the same candidates: the
    same tokens as the host sampler's exact top-k."""
    from ggufworker.engine import graph_cut

    monkeypatch.setattr(graph_cut, "BLOCKS", (700,))
    params = [_params(i) for i in (0, 2, 3)]
    want = _host_tokens(smollm2_path, params, chain=False)
    engine = Engine.load(smollm2_path, n_ctx=2048, n_parallel=3, backend_sampling="on")
    try:
        assert engine._sched.cutter.block == 700  # type: ignore[attr-defined]
        got = _tokens(engine, params)
    finally:
        engine.close()
    assert [m for _, m in modes] == ["cut"] * 3
    assert got == want


def test_which_requests_the_shared_cut_serves() -> None:
    from ggufworker.engine.graph_cut import K, serves

    def p(**kw: object) -> SamplingParams:
        return SamplingParams(**{"temperature": 0.8, "top_k": 40, **kw})  # type: ignore[arg-type]

    assert serves(p(), 49152) and serves(p(top_k=K), 128257)
    assert not serves(p(top_k=0), 49152) and not serves(p(top_k=K + 1), 49152)
    assert serves(p(logit_bias={i: -100.0 for i in range(K - 40)}), 49152)
    assert not serves(p(logit_bias={i: -100.0 for i in range(K - 39)}), 49152)  # too many
    assert not serves(p(logit_bias={5: 0.5}), 49152)  # could lift a token into the top-k
    assert not serves(p(repeat_penalty=1.1), 49152) and not serves(p(presence_penalty=0.2), 49152)
    assert not serves(p(), 64 * 63)  # a vocabulary too small for K blocks


def test_a_cut_that_fails_to_build_fails_only_its_requests(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A C callback cannot raise: when the cut's graph part fails, its rows come back without
    candidates, the cut requests end with a generation error, and a greedy request in the same
    steps still gives its tokens."""
    from ggufworker.engine import graph_cut
    from ggufworker.errors import GenerationError

    def broken(self, ctx, logits):  # type: ignore[no-untyped-def]
        raise RuntimeError("no graph part")

    greedy = SamplingParams(temperature=0.0, max_tokens=N_TOKENS, ignore_eos=True)
    engine = Engine.load(smollm2_path, n_ctx=2048, n_parallel=4, backend_sampling="on")
    try:
        alone = engine.generate(GenerationRequest(PROMPTS[0], greedy)).token_ids
        engine.clear_cache()
        monkeypatch.setattr(graph_cut.GraphCut, "_build", broken)
        kept = engine.submit(GenerationRequest(PROMPTS[0], greedy))
        cut = [engine.submit(GenerationRequest(p, _params(0))) for p in PROMPTS[1:3]]
        for h in cut:
            with pytest.raises(GenerationError, match="no sampled candidates"):
                list(h)
        assert [ev.token_id for ev in kept if ev.token_id is not None] == alone
    finally:
        engine.close()


def test_auto_draws_a_lone_sampled_request_on_the_host(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``auto`` (on a GPU) a sampled request that would run alone gets no chain: attaching
    one makes llama.cpp reserve its graph again before its first token. It is drawn on the host
    from its copied row, the same tokens for the same seed; a second sampled request running
    beside it gets its chain into the graph."""
    from ggufworker.engine import backend_sampling
    from ggufworker.engine._native import llama_cpp

    calls: list[bool] = []
    original = llama_cpp.llama_set_sampler

    def spy(ctx, seq, smpl):  # type: ignore[no-untyped-def]
        calls.append(smpl is not None)
        return original(ctx, seq, smpl)

    params = [_params(0), _params(2)]  # both "cut"
    host = _host_tokens(smollm2_path, params, chain=False)
    monkeypatch.setattr(llama_cpp, "llama_set_sampler", spy)
    # "auto" is "off" on this CPU; "on" with auto's threshold is what auto does on a GPU
    engine = Engine.load(smollm2_path, n_ctx=2048, n_parallel=2, backend_sampling="on")
    try:
        engine._sched.min_rows = backend_sampling.AUTO_MIN_ROWS
        alone = _tokens(engine, params[:1])
        assert calls == []
        engine.clear_cache()
        together = _tokens(engine, params)
        assert calls == [True]  # the second one, beside the first
    finally:
        engine.close()
    assert alone[0] == host[0]
    assert together == host
