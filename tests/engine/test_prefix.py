"""Prefix reuse: a second chat turn reuses the first turn's KV and gives a cold run's output."""

from __future__ import annotations

from ggufworker.engine import Engine, GenerationRequest, SamplingParams

PARAMS = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _history(engine: Engine) -> list[dict[str, str]]:
    facts = " ".join(f"Fact {i}: the number {i} comes after {i - 1}." for i in range(1, 70))
    return [
        {"role": "user", "content": "Remember these facts. " + facts},
        {"role": "assistant", "content": "I will remember them."},
    ]


def test_second_turn_reuses_prefix_and_matches_cold(smollm2: Engine) -> None:
    history = _history(smollm2) + [{"role": "user", "content": "What is fact 3?"}]
    first = smollm2.render_chat(history)
    n_first = len(smollm2.tokenize(first, parse_special=True))
    assert n_first > 900

    smollm2.clear_cache()
    t1 = list(smollm2.submit(GenerationRequest(first, PARAMS, parse_special=True)))
    answer = "".join(e.text for e in t1)
    second = smollm2.render_chat(
        history
        + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And fact 5?"}]
    )
    warm = list(smollm2.submit(GenerationRequest(second, PARAMS, parse_special=True)))
    smollm2.clear_cache()
    cold = list(smollm2.submit(GenerationRequest(second, PARAMS, parse_special=True)))

    assert t1[-1].usage is not None and t1[-1].usage.cached_tokens == 0
    assert warm[-1].usage is not None and warm[-1].usage.cached_tokens >= n_first
    assert cold[-1].usage is not None and cold[-1].usage.cached_tokens == 0
    assert [e.token_id for e in warm] == [e.token_id for e in cold]
    # ~1,000 tokens of prompt processing skipped: the first token comes sooner.
    assert warm[0].time_to_first_token < cold[0].time_to_first_token
