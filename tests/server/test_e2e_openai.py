"""OpenAI API end to end: a real `ggufworker serve` process, real GGUF models, the openai client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai
import pytest

from tests.conftest import SMOLLM2
from tests.server.conftest import DISTINCT_PROMPTS, ServerProcess

PROMPTS = [
    "Name a color.",
    "What is 2 plus 2?",
    "Write one word about the sea.",
    "Say hello in French.",
    "What do cats eat?",
    "Name a planet.",
    "Give me a fruit.",
    "What is the opposite of hot?",
]


def client(server: ServerProcess, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, **kw)


def aclient(server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def _chat(server: ServerProcess, content: str, **kw: object) -> openai.types.chat.ChatCompletion:
    return client(server).chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": content}], temperature=0, **kw
    )


def test_chat_stream_equals_non_stream_with_usage(main_server: ServerProcess) -> None:
    full = _chat(main_server, PROMPTS[0], max_tokens=24)
    assert full.model == SMOLLM2 and full.object == "chat.completion"
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.completion_tokens > 0 and full.usage.prompt_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    stream = client(main_server).chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": PROMPTS[0]}],
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completions_stream_and_not(main_server: ServerProcess) -> None:
    c = client(main_server)
    full = c.completions.create(model=SMOLLM2, prompt="The sky is", max_tokens=12, temperature=0)
    assert full.usage.completion_tokens == 12 and full.choices[0].finish_reason == "length"
    parts = c.completions.create(
        model=SMOLLM2, prompt="The sky is", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(p.choices[0].text for p in parts) == full.choices[0].text
    echoed = c.completions.create(
        model=SMOLLM2, prompt="The sky is", max_tokens=12, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "The sky is" + full.choices[0].text


def test_stop_and_max_completion_tokens(main_server: ServerProcess) -> None:
    free = _chat(main_server, PROMPTS[1], max_tokens=32).choices[0].message.content
    word = free.split()[1] if len(free.split()) > 1 else free[:2]
    stopped = _chat(main_server, PROMPTS[1], max_tokens=32, stop=[word]).choices[0]
    assert word not in stopped.message.content and stopped.finish_reason == "stop"
    assert free.startswith(stopped.message.content)
    short = client(main_server).chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": PROMPTS[1]}],
        temperature=0,
        max_tokens=30,
        max_completion_tokens=3,
    )
    assert short.usage.completion_tokens == 3


def test_logprobs(main_server: ServerProcess) -> None:
    r = _chat(main_server, PROMPTS[2], max_tokens=5, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for tok in content:
        assert len(tok.top_logprobs) == 3
        lps = [t.logprob for t in tok.top_logprobs]
        assert lps == sorted(lps, reverse=True) and lps[0] <= 0
        # greedy: the chosen token is the most likely one
        assert tok.logprob == pytest.approx(lps[0], abs=1e-4)


def test_json_schema_output_validates(main_server: ServerProcess) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client(main_server).chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "Invent a person. Reply in JSON."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)
    obj = client(main_server).chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a JSON object prefix
        assert obj.choices[0].message.content.lstrip().startswith("{")


def test_models_lists_both_and_each_answers_under_its_name(
    main_server: ServerProcess, gemma3_path: Path
) -> None:
    ids = [m.id for m in client(main_server).models.list().data]
    gemma = gemma3_path.stem
    assert ids == [SMOLLM2, gemma]

    async def both() -> list[openai.types.chat.ChatCompletion]:
        c = aclient(main_server)
        return await asyncio.gather(
            *[
                c.chat.completions.create(
                    model=m,
                    messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=8,
                    temperature=0,
                )
                for m in (SMOLLM2, gemma)
            ]
        )

    smol, gem = asyncio.run(both())
    assert (smol.model, gem.model) == (SMOLLM2, gemma)
    assert smol.choices[0].message.content and gem.choices[0].message.content
    # each model answers as it does alone: the other one does not leak into its stream
    alone = _chat(main_server, "Hi", max_tokens=8)
    assert alone.choices[0].message.content == smol.choices[0].message.content


# The concurrent run goes first on a fresh server (cold prompts), then each prompt alone.
CONCURRENT = DISTINCT_PROMPTS


def test_eight_concurrent_streams_equal_alone(batch_server: ServerProcess) -> None:
    greedy = {
        "model": SMOLLM2,
        "temperature": 0,
        "max_tokens": 24,
        "extra_body": {"ignore_eos": True},
    }

    async def together() -> list[str]:
        ac = aclient(batch_server)

        async def one(p: str) -> str:
            stream = await ac.completions.create(prompt=p, stream=True, **greedy)
            return "".join([ch.choices[0].text async for ch in stream])

        return await asyncio.gather(*[one(p) for p in CONCURRENT])

    results = asyncio.run(together())
    c = client(batch_server)
    alone = [c.completions.create(prompt=p, **greedy) for p in CONCURRENT]
    assert all(r.usage.completion_tokens == 24 for r in alone)
    for prompt, a, b in zip(CONCURRENT, alone, results, strict=True):
        assert b == a.choices[0].text, f"concurrent answer differs for {prompt!r}"


def test_n_choices(main_server: ServerProcess) -> None:
    r = client(main_server).chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": PROMPTS[3]}], max_tokens=6, n=3, seed=7
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content for c in r.choices)
    assert 3 <= r.usage.completion_tokens <= 18
    single = client(main_server).chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": PROMPTS[3]}], max_tokens=6, seed=7
    )
    assert r.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once


def test_tools_are_accepted(main_server: ServerProcess) -> None:
    """Tools go to the chat template (checked with a fake engine in test_app_fake.py).
    SmolLM2's template has no tools section, so the tools are described in a system message
    (the generic format; tool calling itself is tested in test_e2e_tools.py)."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    r = client(main_server).chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tool_choice="auto",
        max_tokens=4,
        temperature=0,
    )
    plain = _chat(main_server, "Weather in Paris?", max_tokens=4)
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the tool description
    assert r.choices[0].message.content or r.choices[0].message.tool_calls
