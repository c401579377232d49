"""Tool calling end to end: a real `ggufworker serve` with SmolLM2 (a ChatML template with no
native call syntax, so the generic JSON format), the openai client, schema validation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest

from tests.conftest import SMOLLM2
from tests.server.conftest import ServerProcess, cached_server, running

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = cached_server(
        tmp_path_factory, "tools-server", model_cache, "--model", SMOLLM2, "--parallel", "2"
    )
    with running(proc):
        yield proc


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def _valid_calls(message: object) -> list[tuple[str, dict]]:
    calls = message.tool_calls  # type: ignore[attr-defined]
    assert calls, f"no tool calls in {message!r}"
    out = []
    for call in calls:
        assert call.type == "function" and call.id
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
        out.append((call.function.name, args))
    return out


def test_required_gives_schema_valid_calls(server: ServerProcess) -> None:
    r = client(server).chat.completions.create(
        model=SMOLLM2, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0,
        max_tokens=96,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert _valid_calls(choice.message)


def test_named_tool_choice_forces_that_tool(server: ServerProcess) -> None:
    r = client(server).chat.completions.create(
        model=SMOLLM2, messages=ASK, tools=TOOLS, temperature=0, max_tokens=96,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )  # fmt: skip
    calls = _valid_calls(r.choices[0].message)
    assert [name for name, _ in calls] == ["get_time"] * len(calls)
    assert r.choices[0].finish_reason == "tool_calls"


def test_none_gives_no_call(server: ServerProcess) -> None:
    r = client(server).chat.completions.create(
        model=SMOLLM2, messages=ASK, tools=TOOLS, tool_choice="none", temperature=0,
        max_tokens=32,
    )  # fmt: skip
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_agent_loop_call_result_answer(server: ServerProcess) -> None:
    c = client(server)
    first = c.chat.completions.create(
        model=SMOLLM2, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0,
        max_tokens=96, parallel_tool_calls=False,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    final = c.chat.completions.create(
        model=SMOLLM2, messages=history, tools=[WEATHER], tool_choice="none", temperature=0,
        max_tokens=48,
    )  # fmt: skip
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content
    # the call and its result reached the prompt: the answer differs from one without them
    bare = c.chat.completions.create(model=SMOLLM2, messages=ASK, temperature=0, max_tokens=48)
    assert final.choices[0].message.content != bare.choices[0].message.content


def test_stream_with_tools_in_openai_accumulator(server: ServerProcess) -> None:
    kw = dict(model=SMOLLM2, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0,
              max_tokens=96)  # fmt: skip
    with client(server).chat.completions.stream(**kw) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_completion()
    full = client(server).chat.completions.create(**kw)
    got = _valid_calls(streamed.choices[0].message)
    assert got == _valid_calls(full.choices[0].message)
    assert streamed.choices[0].finish_reason == "tool_calls"
    assert not streamed.choices[0].message.content


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]},
            "tools[0].function.parameters",
        ),
    ],
)
def test_bad_tool_requests_are_400_with_param(
    server: ServerProcess, extra: dict, param: str
) -> None:
    body = {"model": SMOLLM2, "messages": ASK, "tools": TOOLS, **extra}
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(**body)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param  # type: ignore[index]


def test_tool_choice_without_tools_is_400(server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(model=SMOLLM2, messages=ASK, tool_choice="required")
    assert info.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_models_list_capabilities(server: ServerProcess) -> None:
    import httpx

    cards = httpx.get(f"{server.url}/v1/models").json()["data"]
    card = next(c for c in cards if c["id"] == SMOLLM2)
    assert "tools" in card["capabilities"] and "completion" in card["capabilities"]


@pytest.fixture(scope="module")
def hermes_server(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The same model with the detected format overridden: calls are written as Hermes
    ``<tool_call>`` blocks (markers the streaming parser must keep out of content)."""
    proc = cached_server(
        tmp_path_factory, "tools-hermes", model_cache, "--model", SMOLLM2, "--parallel", "2",
        "--tool-call-format", "hermes",
    )  # fmt: skip
    with running(proc):
        yield proc


def test_format_override_streams_hermes_calls_without_markers(hermes_server: ServerProcess) -> None:
    kw = dict(model=SMOLLM2, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0,
              max_tokens=96)  # fmt: skip
    chunks = list(client(hermes_server).chat.completions.create(stream=True, **kw))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_call>" not in content and "</tool" not in content
    deltas = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].id and deltas[0].function.name
    assert all(d.function.name is None for d in deltas[1:] if d.index == deltas[0].index)
    full = client(hermes_server).chat.completions.create(**kw)
    assert _valid_calls(full.choices[0].message)
    args = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    assert args == full.choices[0].message.tool_calls[0].function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_leaves_text_free_or_gives_valid_calls(server: ServerProcess) -> None:
    r = client(server).chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "Say hello."}], tools=TOOLS,
        tool_choice="auto", temperature=0, max_tokens=24,
    )  # fmt: skip
    message = r.choices[0].message
    if message.tool_calls:
        _valid_calls(message)
        assert r.choices[0].finish_reason == "tool_calls"
    else:
        assert message.content and r.choices[0].finish_reason in ("stop", "length")


def test_auto_lazy_grammar_switches_on_at_the_marker(hermes_server: ServerProcess) -> None:
    """In ``auto`` mode a call that the model starts is held to the grammar from its marker
    on; a marker that ends inside a token (here ``>``` in a code span) leaves text free and,
    above all, does not abort the server."""
    c = client(hermes_server)
    kw = dict(model=SMOLLM2, tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=48)
    started = c.chat.completions.create(
        messages=[{"role": "user", "content": "Repeat after me: <tool_call>"}], **kw
    )
    assert started.choices[0].finish_reason == "tool_calls"
    assert _valid_calls(started.choices[0].message)
    mid_token = c.chat.completions.create(
        messages=[{"role": "user", "content": "Say: I will use <tool_call> now."}], **kw
    )
    assert mid_token.choices[0].message.content
    assert hermes_server.proc.poll() is None
