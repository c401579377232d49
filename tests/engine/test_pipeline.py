"""Pipelined stepping gives exactly what plain stepping gives.

With ``pipeline=True`` (the default when layers run on a GPU) the scheduler launches the next
decode before it turns the last sampled tokens into text and events, so a sequence that meets a
stop string has one token in flight that must be dropped. These tests run the same mixed traffic
through a plain and a pipelined engine on the same backend and compare every event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ggufworker.engine import Engine, GenerationRequest, SamplingParams, TokenEvent
from tests.engine.agree import assert_greedy_agree
from tests.engine.prompts import PROMPTS


@pytest.fixture(scope="module")
def engines(smollm2_path: Path) -> Iterator[tuple[Engine, Engine]]:
    plain = Engine.load(smollm2_path, n_ctx=4096, n_parallel=8, pipeline=False)
    piped = Engine.load(smollm2_path, n_ctx=4096, n_parallel=8, pipeline=True)
    yield plain, piped
    plain.close()
    piped.close()


def _requests(engine: Engine) -> list[GenerationRequest]:
    """Traffic that ends every way: length, end of generation, stop strings met at several
    offsets, plus logprobs and a seeded sampler chain."""
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    probe = engine.generate(GenerationRequest(PROMPTS[0], greedy))
    words = probe.text.split()
    assert len(words) >= 6, probe.text
    chat = engine.render_chat([{"role": "user", "content": "Say hello in three words."}])
    return [
        GenerationRequest(PROMPTS[0], greedy),
        GenerationRequest(
            PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, stop=(words[1],))
        ),
        GenerationRequest(
            PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, stop=(words[4],))
        ),
        GenerationRequest(chat, SamplingParams(temperature=0, max_tokens=64), parse_special=True),
        GenerationRequest(PROMPTS[1], SamplingParams(temperature=0, max_tokens=9, logprobs=3)),
        GenerationRequest(
            PROMPTS[2], SamplingParams(temperature=0.8, seed=7, max_tokens=20, ignore_eos=True)
        ),
        GenerationRequest(PROMPTS[3], SamplingParams(temperature=0, max_tokens=1)),
        GenerationRequest(PROMPTS[4], SamplingParams(temperature=0, max_tokens=16, stop=("\n",))),
    ]


def _events(engine: Engine, requests: list[GenerationRequest]) -> list[list[TokenEvent]]:
    engine.clear_cache()
    handles = [engine.submit(r) for r in requests]
    return [list(h) for h in handles]


def _strip(events: list[TokenEvent]) -> list[tuple]:  # type: ignore[type-arg]
    return [
        (e.text, e.token_id, e.logprob, e.top_logprobs, e.finish_reason, e.usage) for e in events
    ]


def test_pipelined_events_equal_plain(engines: tuple[Engine, Engine]) -> None:
    """All requests at once. A dropped in-flight token makes the two engines' batches differ
    in size for a step, which may tip a near-tie (tests/engine/agree.py): a greedy output must
    equal the plain one event for event, or part from it only at a near-tie."""
    plain, piped = engines
    requests = _requests(plain)
    want = _events(plain, requests)
    got = _events(piped, requests)
    assert {"length", "stop"} <= {ev[-1].finish_reason for ev in want}
    identical = 0
    for r, w, g in zip(requests, want, got, strict=True):
        what = f"{r.prompt!r} {r.params}"
        if r.params.temperature > 0:  # a seeded draw has no tie test; its length is fixed
            assert _strip(g)[-1][-2:] == _strip(w)[-1][-2:], what
            continue
        ids = [[e.token_id for e in ev if e.token_id is not None] for ev in (w, g)]
        prompt = plain.tokenize(r.prompt, parse_special=r.parse_special)  # type: ignore[arg-type]
        if assert_greedy_agree(plain, prompt, ids[0], ids[1], what, exact=False):
            assert _strip(g) == _strip(w), what
            identical += 1
    assert identical >= 1  # event-level equality was checked somewhere


@pytest.mark.parametrize("index", range(8))
def test_pipelined_alone_equals_plain(engines: tuple[Engine, Engine], index: int) -> None:
    """Each request alone: same batch shapes in both modes, so exact on any backend."""
    plain, piped = engines
    request = _requests(plain)[index]
    want = _events(plain, [request])[0]
    got = _events(piped, [request])[0]
    assert _strip(got) == _strip(want)


def test_pipelined_prefix_reuse(engines: tuple[Engine, Engine]) -> None:
    """A stop string leaves an extra token in the slot's KV; reuse must still be exact."""
    _, piped = engines
    prompt = PROMPTS[0]
    piped.clear_cache()
    probe = piped.generate(GenerationRequest(prompt, SamplingParams(temperature=0, max_tokens=12)))
    stop = probe.text.split()[2]
    params = SamplingParams(temperature=0, max_tokens=12, stop=(stop,))
    piped.clear_cache()
    first = piped.generate(GenerationRequest(prompt, params))
    again = piped.generate(GenerationRequest(prompt, params))
    piped.clear_cache()
    cold = piped.generate(GenerationRequest(prompt, params))
    assert first.finish_reason == "stop"
    n_prompt = len(piped.tokenize(prompt))
    assert again.usage.cached_tokens == n_prompt - 1
    assert cold.token_ids == first.token_ids  # both cold: same batches on any backend
    assert cold.text == first.text
    ids = piped.tokenize(prompt)
    if assert_greedy_agree(piped, ids, cold.token_ids, again.token_ids, "reused prefix"):
        assert again.text == cold.text
