"""The Anthropic Messages API end to end: a real `ggufworker serve` with SmolLM2 (ChatML, so the
generic JSON call format) and SmolLM2 re-templated as Qwen3 (hermes calls, ``<think>``) and
Qwen3.5 (a template that opens the thinking block itself), driven by the official ``anthropic``
client. Answers are greedy (``temperature`` 0; this client version sends it through
``extra_body``) so a streamed and a non-streamed answer to one request are the same text."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.conftest import SMOLLM2
from tests.server.conftest import KEYS, ServerProcess, cached_server, running

QWEN3 = "Qwen-Qwen3-0.6B"  # hermes <tool_call> blocks, <think> when the model writes it
QWEN35 = "Qwen3.5-4B"  # opens <think> in the prompt: the model always thinks first
GREEDY = {"temperature": 0}
MAX_BODY = 262_144

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
TIME = {
    "name": "get_time",
    "description": "Get the local time in a timezone",
    "input_schema": {
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
    },
    "cache_control": {"type": "ephemeral"},
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SEA = [{"role": "user", "content": "Write a sentence about the sea."}]


@pytest.fixture(scope="module")
def models(smollm2_with_template: Callable[[str], Path]) -> dict[str, str]:
    """Served name (file stem) -> path of the re-templated models."""
    paths = [smollm2_with_template(t) for t in (QWEN3, QWEN35)]
    return {p.stem: str(p) for p in paths}


@pytest.fixture(scope="module")
def server(
    models: dict[str, str], model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    files = [a for path in models.values() for a in ("--model", path)]
    proc = cached_server(
        tmp_path_factory, "anthropic-server", model_cache, "--model", SMOLLM2, *files,
        "--parallel", "2", "--max-body-bytes", str(MAX_BODY),
    )  # fmt: skip
    with running(proc):
        yield proc


def client(server: ServerProcess, key: str = "none") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


def name_of(template: str) -> str:
    return f"smollm2-{template}"


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def create(server: ServerProcess, **kw: Any) -> Any:
    kw.setdefault("model", SMOLLM2)
    kw.setdefault("max_tokens", 32)
    return client(server).messages.create(extra_body=GREEDY, **kw)


def sse(server: ServerProcess, body: dict[str, Any], **headers: str) -> list[tuple[str, Any]]:
    """A streamed request's (event name, data) pairs, read raw."""
    out: list[tuple[str, Any]] = []
    with httpx.stream(
        "POST", f"{server.url}/v1/messages", json={**body, "stream": True}, headers=headers,
        timeout=120,
    ) as r:  # fmt: skip
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                assert name is not None, "data without an event name"
                out.append((name, json.loads(line[len("data: ") :])))
                name = None
            else:
                assert line == "", f"unexpected line {line!r}"
    return out


def valid_tool_uses(message: Any) -> list[tuple[str, dict[str, Any]]]:
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses, f"no tool_use block in {message!r}"
    out = []
    for block in uses:
        assert block.id.startswith("toolu_")
        jsonschema.validate(block.input, SCHEMAS[block.name])
        out.append((block.name, block.input))
    return out


# --- text -------------------------------------------------------------------------------------


def test_text_message_shape_and_usage(server: ServerProcess) -> None:
    m = create(server, messages=SEA, metadata={"user_id": "u-1"}, service_tier="auto")
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.model == SMOLLM2
    assert [b.type for b in m.content] == ["text"] and text_of(m)
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    u = m.usage
    assert u.output_tokens > 0 and u.cache_creation_input_tokens == 0
    # input_tokens excludes what was read from the KV cache; together they are the prompt
    count = client(server).messages.count_tokens(model=SMOLLM2, messages=SEA)
    assert u.input_tokens + u.cache_read_input_tokens == count.input_tokens
    # asked again, the prompt comes from the cache and the split moves, the sum does not
    again = create(server, messages=SEA)
    assert again.usage.cache_read_input_tokens > 0
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == count.input_tokens
    assert text_of(again) == text_of(m)


def test_system_string_and_cached_blocks_are_the_same_prompt(server: ServerProcess) -> None:
    system = "You are a pirate. Answer like one."
    blocks = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    c = client(server)
    two = [blocks[0], {"type": "text", "text": "Keep it short."}]
    counts = [
        c.messages.count_tokens(model=SMOLLM2, messages=SEA, system=s).input_tokens
        for s in (system, blocks, two)
    ]
    # (SmolLM2's template has a default system prompt of its own, so no "bare" comparison)
    assert counts[0] == counts[1] < counts[2]
    as_string = create(server, messages=SEA, system=system)
    as_blocks = create(server, messages=SEA, system=blocks)
    assert text_of(as_string) == text_of(as_blocks)
    assert text_of(as_string) != text_of(create(server, messages=SEA))
    total = as_blocks.usage.input_tokens + as_blocks.usage.cache_read_input_tokens
    assert total == counts[1]


def test_multi_turn_history_reaches_the_prompt(server: ServerProcess) -> None:
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "text", "text": "Nice to meet you, Ada!"}]},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    c = client(server)
    long = c.messages.count_tokens(model=SMOLLM2, messages=history).input_tokens
    short = c.messages.count_tokens(model=SMOLLM2, messages=history[2:]).input_tokens
    assert long > short
    m = create(server, messages=history)
    assert text_of(m)
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == long


def test_max_tokens_stop(server: ServerProcess) -> None:
    m = create(server, messages=SEA, max_tokens=5)
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 5
    assert text_of(m)


def test_stop_sequence_from_the_greedy_output(server: ServerProcess) -> None:
    first = text_of(create(server, messages=SEA, max_tokens=32))
    words = [w.strip(".,;:!?") for w in first.split()]
    word = next(w for w in words[3:] if len(w) >= 4)
    m = create(server, messages=SEA, max_tokens=32, stop_sequences=["zzzz-never", word])
    assert m.stop_reason == "stop_sequence"
    assert m.stop_sequence == word
    assert text_of(m) == first[: first.index(word)]


def test_output_format_json_schema(server: ServerProcess) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    m = create(
        server, messages=ASK, max_tokens=48,
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )  # fmt: skip
    assert m.stop_reason == "end_turn"
    jsonschema.validate(json.loads(text_of(m)), schema)


# --- streaming --------------------------------------------------------------------------------


def test_stream_events_in_order_and_text_equal_to_create(server: ServerProcess) -> None:
    body = {"model": SMOLLM2, "max_tokens": 32, "messages": SEA, **GREEDY}
    events = sse(server, body)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names[-2] == "message_delta" and "ping" in names
    assert "[DONE]" not in json.dumps(events)
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["id"].startswith("msg_") and start["usage"]["input_tokens"] > 0
    blocks = [n for n in names if n.startswith("content_block")]
    assert blocks[0] == "content_block_start" and blocks[-1] == "content_block_stop"
    text = "".join(
        d["delta"]["text"] for n, d in events if n == "content_block_delta"
    )  # one text block
    final = events[-2][1]
    m = create(server, messages=SEA, max_tokens=32)
    assert text == text_of(m)
    assert final["delta"]["stop_reason"] == m.stop_reason
    assert final["usage"]["output_tokens"] == m.usage.output_tokens

    # the client's stream helpers assemble the same message
    with client(server).messages.stream(
        model=SMOLLM2, max_tokens=32, messages=SEA, extra_body=GREEDY
    ) as stream:
        streamed = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert streamed == text_of(message) == text_of(m)
    assert message.stop_reason == m.stop_reason
    assert message.usage.output_tokens == m.usage.output_tokens
    count = client(server).messages.count_tokens(model=SMOLLM2, messages=SEA).input_tokens
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == count


def test_stream_stop_sequence_and_max_tokens(server: ServerProcess) -> None:
    first = text_of(create(server, messages=SEA, max_tokens=32))
    word = next(w for w in first.split()[3:] if len(w.strip(".,")) >= 4).strip(".,")
    with client(server).messages.stream(
        model=SMOLLM2, max_tokens=32, messages=SEA, stop_sequences=[word], extra_body=GREEDY
    ) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == word
    assert text_of(message) == first[: first.index(word)]


# --- tools ------------------------------------------------------------------------------------


def test_tool_choice_any_gives_schema_valid_tool_use(server: ServerProcess) -> None:
    m = create(server, messages=ASK, tools=TOOLS, tool_choice={"type": "any"}, max_tokens=48)
    assert m.stop_reason == "tool_use"
    assert valid_tool_uses(m)


def test_named_tool_choice_forces_that_tool(server: ServerProcess) -> None:
    m = create(
        server, messages=ASK, tools=TOOLS, max_tokens=48,
        tool_choice={"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
    )  # fmt: skip
    assert m.stop_reason == "tool_use"
    assert [name for name, _ in valid_tool_uses(m)] == ["get_time"]


def test_tool_choice_none_answers_with_text_only(server: ServerProcess) -> None:
    m = create(server, messages=ASK, tools=TOOLS, tool_choice={"type": "none"})
    assert [b.type for b in m.content] == ["text"]
    assert m.stop_reason in ("end_turn", "max_tokens")


def test_tool_result_in_history_is_answered_with_text(server: ServerProcess) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "get_weather",
                    "input": {"city": "Paris", "unit": "celsius"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                    "content": [{"type": "text", "text": "21 degrees, clear sky"}],
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ]
    m = create(server, messages=history, tools=TOOLS, tool_choice={"type": "none"})
    assert [b.type for b in m.content] == ["text"] and text_of(m)
    # the call and its result reached the prompt
    c = client(server)
    with_result = c.messages.count_tokens(model=SMOLLM2, messages=history, tools=TOOLS)
    without = c.messages.count_tokens(model=SMOLLM2, messages=ASK, tools=TOOLS)
    assert with_result.input_tokens > without.input_tokens + 10
    # an error result is a different prompt
    failed = json.loads(json.dumps(history))
    failed[2]["content"][0]["is_error"] = True
    errored = c.messages.count_tokens(model=SMOLLM2, messages=failed, tools=TOOLS)
    assert errored.input_tokens > with_result.input_tokens


def test_streamed_tool_input_concatenates_to_the_final_input(server: ServerProcess) -> None:
    body = {
        "model": SMOLLM2, "max_tokens": 48, "messages": ASK, "tools": TOOLS,
        "tool_choice": {"type": "any"}, **GREEDY,
    }  # fmt: skip
    events = sse(server, body)
    starts = [d for n, d in events if n == "content_block_start"]
    assert starts and all(d["content_block"]["type"] == "tool_use" for d in starts)
    first = starts[0]["index"]
    parts = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["index"] == first
    ]
    assert all(
        d["delta"]["type"] == "input_json_delta" for n, d in events if n == "content_block_delta"
    )
    assert len(parts) > 1  # streamed in pieces, not at the end
    streamed_input = json.loads("".join(parts))
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    m = create(server, messages=ASK, tools=TOOLS, tool_choice={"type": "any"}, max_tokens=48)
    tool_use = next(b for b in m.content if b.type == "tool_use")
    assert streamed_input == tool_use.input
    assert starts[0]["content_block"]["name"] == tool_use.name
    # the client accumulates the same input
    with client(server).messages.stream(
        model=SMOLLM2, max_tokens=48, messages=ASK, tools=TOOLS, tool_choice={"type": "any"},
        extra_body=GREEDY,
    ) as stream:  # fmt: skip
        message = stream.get_final_message()
    assert valid_tool_uses(message) == valid_tool_uses(m)
    assert message.stop_reason == "tool_use"


def test_agent_loop_with_a_native_tool_template(server: ServerProcess) -> None:
    """Qwen3's template: hermes ``<tool_call>`` blocks, tool results as ``<tool_response>``."""
    model = name_of(QWEN3)
    tools = [WEATHER]
    no_think = {"type": "disabled"}
    first = create(
        server, model=model, messages=ASK, tools=tools, tool_choice={"type": "any"},
        max_tokens=48, thinking=no_think,
    )  # fmt: skip
    assert first.stop_reason == "tool_use"
    ((name, args),) = valid_tool_uses(first)
    assert name == "get_weather"
    call = next(b for b in first.content if b.type == "tool_use")
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "21 degrees, sunny"}
            ],
        },
    ]
    final = create(
        server, model=model, messages=history, tools=tools, max_tokens=32, thinking=no_think
    )
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in final.content] == ["text"] and text_of(final)
    # the call and its result are in the prompt, rendered by the template
    counts = [
        client(server)
        .messages.count_tokens(model=model, messages=m, tools=tools, thinking=no_think)
        .input_tokens
        for m in (ASK, history)
    ]
    assert counts[1] > counts[0]
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == counts[1]


# --- thinking ---------------------------------------------------------------------------------


def _tokens(server: ServerProcess, model: str, text: str) -> int:
    r = httpx.post(f"{server.url}/tokenize", json={"content": text, "model": model}, timeout=30)
    return len(r.json()["tokens"])


@pytest.mark.parametrize("budget", [8, 16])
def test_thinking_budget_then_text(server: ServerProcess, budget: int) -> None:
    model = name_of(QWEN35)
    ask = [{"role": "user", "content": "Explain why the sky is blue."}]
    thinking = {"type": "enabled", "budget_tokens": budget}
    m = create(server, model=model, messages=ask, max_tokens=48, thinking=thinking)
    assert [b.type for b in m.content] == ["thinking", "text"], m.content
    block = m.content[0]
    assert block.thinking and isinstance(block.signature, str) and block.signature
    assert "<think>" not in text_of(m) and "</think>" not in text_of(m)
    # the budget caps the thinking (the closing marker the engine writes is the + 1)
    assert _tokens(server, model, block.thinking) <= budget + 1
    assert m.usage.output_tokens <= 48

    # streamed: a thinking block with its signature before it stops, then the same text
    events = sse(server, {"model": model, "max_tokens": 48, "messages": ask,
                          "thinking": thinking, **GREEDY})  # fmt: skip
    kinds = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert kinds == ["thinking", "text"]
    deltas = [d["delta"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    assert deltas[-1]["type"] == "signature_delta"
    assert deltas[-1]["signature"] == block.signature
    assert "".join(d.get("thinking", "") for d in deltas[:-1]) == block.thinking
    with client(server).messages.stream(
        model=model, max_tokens=48, messages=ask, thinking=thinking, extra_body=GREEDY
    ) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0].thinking == block.thinking
    assert text_of(streamed) == text_of(m)


def test_thinking_disabled_gives_text_only(server: ServerProcess) -> None:
    m = create(
        server, model=name_of(QWEN35), max_tokens=32, thinking={"type": "disabled"},
        messages=[{"role": "user", "content": "Explain why the sky is blue."}],
    )  # fmt: skip
    assert [b.type for b in m.content] == ["text"]


def test_thinking_history_is_accepted(server: ServerProcess) -> None:
    history = [
        {"role": "user", "content": "What is 2 plus 3?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two and three.", "signature": "abc"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "5"},
            ],
        },
        {"role": "user", "content": "And 3 plus 4?"},
    ]
    m = create(server, model=name_of(QWEN3), messages=history, thinking={"type": "disabled"})
    assert text_of(m)


# --- errors -----------------------------------------------------------------------------------


def _anthropic_error(info: pytest.ExceptionInfo[Any], status: int, kind: str) -> str:
    err = info.value
    assert err.status_code == status
    assert err.body["type"] == "error"  # type: ignore[index]
    assert set(err.body["error"]) == {"type", "message"}  # type: ignore[index]
    assert err.body["error"]["type"] == kind  # type: ignore[index]
    return str(err.body["error"]["message"])  # type: ignore[index]


def test_unknown_model_is_404_not_found(server: ServerProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        create(server, model="claude-opus-9", messages=SEA)
    assert "claude-opus-9" in _anthropic_error(info, 404, "not_found_error")
    with pytest.raises(anthropic.NotFoundError):
        client(server).messages.count_tokens(model="claude-opus-9", messages=SEA)


def test_missing_max_tokens_and_empty_messages_are_400(server: ServerProcess) -> None:
    c = client(server)
    with pytest.raises(anthropic.BadRequestError) as info:
        c.messages.create(model=SMOLLM2, messages=SEA, max_tokens=anthropic.omit, timeout=60)
    assert "max_tokens" in _anthropic_error(info, 400, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as info:
        c.messages.create(model=SMOLLM2, messages=[], max_tokens=8)
    assert "messages" in _anthropic_error(info, 400, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as info:
        c.messages.create(model=SMOLLM2, messages=SEA, max_tokens=8, stream=True,
                          extra_body={"temperature": 3})  # fmt: skip
    assert "temperature" in _anthropic_error(info, 400, "invalid_request_error")


def test_image_to_a_text_model_is_400_naming_the_model(server: ServerProcess) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}]
    with pytest.raises(anthropic.BadRequestError) as info:
        create(server, messages=messages)
    message = _anthropic_error(info, 400, "invalid_request_error")
    assert SMOLLM2 in message and "image" in message
    # inside a tool result too
    history = [
        *ASK,
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [image]}]},
    ]  # fmt: skip
    with pytest.raises(anthropic.BadRequestError) as info:
        create(server, messages=history, tools=TOOLS)
    assert SMOLLM2 in _anthropic_error(info, 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ({"tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"tools": [{"name": "f", "input_schema": 3}]}, "input_schema"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search"),
        ({"messages": [*SEA, {"role": "assistant", "content": "The sea"}]}, "prefill"),
        ({"messages": [{"role": "user", "content": [{"type": "search_result"}]}]}, "search"),
    ],
)
def test_bad_requests_are_400(server: ServerProcess, extra: dict, word: str) -> None:
    body = {"messages": SEA, "tools": TOOLS, **extra}
    with pytest.raises(anthropic.BadRequestError) as info:
        create(server, **body)
    assert word in _anthropic_error(info, 400, "invalid_request_error")


def test_body_over_the_limit_is_413_in_anthropic_envelope(server: ServerProcess) -> None:
    big = {"model": SMOLLM2, "max_tokens": 4, "messages": [
        {"role": "user", "content": "x" * (MAX_BODY + 10)}]}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/messages", json=big, timeout=30)
    assert r.status_code == 413
    assert r.json() == {
        "type": "error",
        "error": {"type": "request_too_large", "message": r.json()["error"]["message"]},
    }
    # other paths keep OpenAI's envelope
    r = httpx.post(f"{server.url}/v1/chat/completions", json=big, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_api_keys_in_anthropic_envelope(tight_server: ServerProcess) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        client(tight_server, "wrong-key").messages.create(model=SMOLLM2, max_tokens=4,
                                                          messages=SEA)  # fmt: skip
    _anthropic_error(info, 401, "authentication_error")
    r = httpx.post(f"{tight_server.url}/v1/messages/count_tokens", json={})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    for key in KEYS:  # sent as x-api-key
        m = client(tight_server, key).messages.create(
            model=SMOLLM2, max_tokens=4, messages=SEA, extra_body=GREEDY
        )
        assert m.usage.output_tokens > 0
    bearer = anthropic.Anthropic(base_url=tight_server.url, auth_token=KEYS[0], max_retries=0)
    assert bearer.messages.count_tokens(model=SMOLLM2, messages=SEA).input_tokens > 0


def test_busy_server_is_429_rate_limit_error(tight_server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    long = {"model": SMOLLM2, "messages": SEA, "max_tokens": 2000, "stream": True,
            "ignore_eos": True}  # fmt: skip
    with httpx.stream(
        "POST", f"{tight_server.url}/v1/chat/completions", json=long, headers=auth, timeout=60
    ) as busy:
        lines = busy.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the one slot is taken
        with pytest.raises(anthropic.RateLimitError) as info:
            client(tight_server, KEYS[1]).messages.create(model=SMOLLM2, max_tokens=4, messages=SEA)
        _anthropic_error(info, 429, "rate_limit_error")
        assert int(info.value.response.headers["retry-after"]) >= 1


# --- a replayed Claude Code request -----------------------------------------------------------


def _claude_code_tool(name: str, description: str, properties: dict, required: list) -> dict:
    return {
        "name": name,
        "description": description,
        "input_schema": {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    }


def claude_code_body(model: str) -> dict[str, Any]:
    """A request as Claude Code sends it to a custom ANTHROPIC_BASE_URL (per its LLM-gateway
    documentation): system text blocks with ephemeral cache_control, a system reminder in the
    first user turn, its built-in tools, metadata.user_id, tool_choice auto, streamed."""
    s = {"type": "string"}
    tools = [
        _claude_code_tool("Task", "Launch a new agent to handle a multi-step task",
                          {"description": s, "prompt": s, "subagent_type": s},
                          ["description", "prompt", "subagent_type"]),
        _claude_code_tool("Bash", "Executes a given bash command",
                          {"command": s, "timeout": {"type": "number"}, "description": s},
                          ["command"]),
        _claude_code_tool("Glob", "Fast file pattern matching tool",
                          {"pattern": s, "path": s}, ["pattern"]),
        _claude_code_tool("Grep", "A search tool built on ripgrep",
                          {"pattern": s, "path": s, "glob": s,
                           "output_mode": {"type": "string",
                                           "enum": ["content", "files_with_matches", "count"]},
                           "-i": {"type": "boolean"}}, ["pattern"]),
        _claude_code_tool("Read", "Reads a file from the local filesystem",
                          {"file_path": s, "offset": {"type": "number"},
                           "limit": {"type": "number"}}, ["file_path"]),
        _claude_code_tool("Edit", "Performs exact string replacements in files",
                          {"file_path": s, "old_string": s, "new_string": s,
                           "replace_all": {"type": "boolean", "default": False}},
                          ["file_path", "old_string", "new_string"]),
        _claude_code_tool("Write", "Writes a file to the local filesystem",
                          {"file_path": s, "content": s}, ["file_path", "content"]),
        _claude_code_tool("TodoWrite", "Create and manage a structured task list",
                          {"todos": {"type": "array", "items": {
                              "type": "object",
                              "properties": {"content": {"type": "string", "minLength": 1},
                                             "status": {"type": "string", "enum": [
                                                 "pending", "in_progress", "completed"]},
                                             "id": s},
                              "required": ["content", "status", "id"],
                              "additionalProperties": False}}},
                          ["todos"]),
    ]  # fmt: skip
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    return {
        "model": model,
        "max_tokens": 48,
        "temperature": 1,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
            {
                "type": "text",
                "text": "You are an interactive CLI tool that helps users with software "
                "engineering tasks. Use the instructions below and the tools available to you "
                "to assist the user.\n\n# Tone and style\nBe concise.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "<system-reminder>\nAs you answer the user's questions, you "
                        "can use the following context: the working directory is /repo.\n"
                        "</system-reminder>",
                    },
                    {
                        "type": "text",
                        "text": "List the Python files in this project.",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            }
        ],
        "tools": tools,
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "user_0123abcd_account__session_4567ef"},
        "stream": True,
    }


def test_replayed_claude_code_request(server: ServerProcess) -> None:
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
        "fine-grained-tool-streaming-2025-05-14",
        "x-api-key": "sk-ant-local",
        "user-agent": "claude-cli/2.0.0 (external, cli)",
        "x-app": "cli",
    }
    body = claude_code_body(SMOLLM2)
    events = sse(server, body, **headers)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "error" not in names
    stop = events[-2][1]["delta"]["stop_reason"]
    assert stop in ("end_turn", "max_tokens", "tool_use")
    tools = {t["name"]: t["input_schema"] for t in body["tools"]}
    open_blocks: dict[int, dict[str, Any]] = {}
    for name, data in events:
        if name == "content_block_start":
            open_blocks[data["index"]] = {**data["content_block"], "json": ""}
        elif name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            open_blocks[data["index"]]["json"] += data["delta"]["partial_json"]
    for block in open_blocks.values():
        assert block["type"] in ("text", "tool_use")
        if block["type"] == "tool_use" and stop == "tool_use":
            jsonschema.validate(json.loads(block["json"]), tools[block["name"]])
    # the same request through the beta client (?beta=true), not streamed
    body.pop("stream")
    sampling = {"temperature": body.pop("temperature")}  # this client sends it as extra_body
    beta = client(server).beta.messages.create(**body, extra_body=sampling)
    assert beta.type == "message" and beta.content
    count = client(server).messages.count_tokens(
        model=SMOLLM2, system=body["system"], messages=body["messages"], tools=body["tools"]
    )
    assert count.input_tokens == beta.usage.input_tokens + beta.usage.cache_read_input_tokens
