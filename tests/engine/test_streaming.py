"""Streaming: stop strings across token boundaries, UTF-8 integrity, async consumers."""

from __future__ import annotations

import asyncio

from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.engine.text import TextStream
from tests.engine.agree import assert_greedy_agree


def _pieces(engine: Engine, ids: list[int]) -> list[str]:
    return [engine.detokenize([t]) for t in ids]


def test_stop_string_split_across_tokens(smollm2: Engine) -> None:
    prompt = "Once upon a time, in a small village,"
    base = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    # Both runs cold (no reused prompt KV), so both decode in the same batch shapes.
    smollm2.clear_cache()
    full = smollm2.generate(GenerationRequest(prompt, base))
    # Build a stop string from the end of one token and the start of the next.
    pieces = _pieces(smollm2, full.token_ids)
    k = next(
        i for i in range(5, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2
    )
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    cut = full.text.find(stop)
    assert cut >= 0
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=("@@never", stop))
    smollm2.clear_cache()
    handle = smollm2.submit(GenerationRequest(prompt, params))
    events = list(handle)
    text = "".join(e.text for e in events)
    assert events[-1].finish_reason == "stop"
    assert text == full.text[:cut]
    assert stop not in text


def test_utf8_streamed_intact(smollm2: Engine) -> None:
    target = "emoji 😀🎉 and 日本語の文字 ok"
    escaped = target.replace('"', '\\"')
    grammar = f'root ::= "{escaped}"'
    params = SamplingParams(temperature=0, max_tokens=64, grammar=grammar)
    events = list(smollm2.submit(GenerationRequest("Say something:", params)))
    ids = [e.token_id for e in events if e.token_id is not None]
    # The test only means something if some token is a fragment of a character.
    assert any("\ufffd" in smollm2.detokenize([t]) for t in ids)
    for e in events:
        assert "\ufffd" not in e.text
    assert "".join(e.text for e in events) == target


def test_text_stream_holds_back_partial_stop() -> None:
    s = TextStream(stop=("END",))
    assert s.push(b"abc E") == "abc "
    assert s.push(b"N") == ""
    assert s.push(b"x") == "ENx"
    assert s.push(b" E") == " "
    assert s.push(b"ND more") == ""
    assert s.stopped


def test_async_consumer(smollm2: Engine) -> None:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    ref = smollm2.generate(GenerationRequest("The moon is", params))

    async def consume() -> list[list[int]]:
        handles = [smollm2.submit(GenerationRequest("The moon is", params)) for _ in range(3)]

        async def one(h):  # type: ignore[no-untyped-def]
            return [e.token_id async for e in h if e.token_id is not None]

        return await asyncio.gather(*(one(h) for h in handles))

    prompt = smollm2.tokenize("The moon is")
    for ids in asyncio.run(consume()):
        assert_greedy_agree(smollm2, prompt, ref.token_ids, ids, "async consumer")
