"""The Responses API end to end: a real `ggufworker serve` with SmolLM2 (its own ChatML
template: the generic tool format) and SmolLM2 re-templated with Qwen3's template (native
Hermes calls and thinking markers), driven by the official openai client.

One server for the module, on a home of its own, so its SQLite store is this module's; the
restart test stops it and starts the next one on the same home.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response as OpenAIResponse

from tests.server.conftest import COMMON, ServerProcess

QWEN3 = "Qwen-Qwen3-0.6B"  # llama.cpp's copy of Qwen3's template: hermes calls, <think>
QWEN35 = "Qwen3.5-4B"  # its prompt opens <think> unless enable_thinking is false
WEATHER = {
    "type": "function",
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
}
TIME = {
    "type": "function",
    "name": "get_time",
    "description": "Get the local time in a timezone",
    "parameters": {
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["name"]: t["parameters"] for t in TOOLS}
ASK = "What is the weather in Paris?"
GREEDY: dict[str, Any] = {"temperature": 0, "max_output_tokens": 48}


class Served:
    """The module's server, restartable on the same home (the same response store)."""

    def __init__(self, tmp: Path, models: list[Path]) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.models = models
        self.starts = 0
        self.server = self._start()

    def _start(self) -> ServerProcess:
        self.starts += 1
        args = [*COMMON, "--parallel", "2", "--offline"]
        for path in self.models:
            args += ["--model", str(path)]
        server = ServerProcess(args, self.tmp / f"server-{self.starts}.log", home=self.home)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def restart(self) -> None:
        self.server.stop()
        self.server = self._start()

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def served(
    smollm2_path: Path,
    smollm2_with_template: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    models = [smollm2_path, smollm2_with_template(QWEN3), smollm2_with_template(QWEN35)]
    s = Served(tmp_path_factory.mktemp("responses"), models)
    try:
        yield s
    finally:
        s.server.stop()


@pytest.fixture(scope="module")
def smol(smollm2_path: Path) -> str:
    return smollm2_path.stem  # a model served by path is named by its file stem


@pytest.fixture(scope="module")
def qwen(smollm2_with_template: Callable[[str], Path]) -> str:
    return smollm2_with_template(QWEN3).stem


@pytest.fixture(scope="module")
def thinker(smollm2_with_template: Callable[[str], Path]) -> str:
    return smollm2_with_template(QWEN35).stem


def _calls(resp: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every function_call item, its arguments checked against the tool's schema."""
    out = []
    for item in resp.output:
        if item.type == "function_call":
            assert item.id.startswith("fc_") and item.call_id and item.status == "completed"
            args = json.loads(item.arguments)
            jsonschema.validate(args, SCHEMAS[item.name])
            out.append((item.name, args))
    return out


def _sse(lines: Iterator[str]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of a server-sent event stream."""
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            assert name is not None, "data without an event line"
            events.append((name, json.loads(line[len("data: ") :])))
            name = None
    return events


# --- answers ---------------------------------------------------------------------------------


def test_text_answer_has_openai_shape(served: Served, smol: str) -> None:
    raw = httpx.post(
        f"{served.server.url}/v1/responses",
        json={"model": smol, "input": "What is 2+2?", **GREEDY},
        timeout=60,
    )
    assert raw.status_code == 200
    resp = OpenAIResponse.model_validate(raw.json())  # strict: every required field present
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == smol
    assert resp.status == "completed" and resp.output_text
    message = resp.output[-1]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    usage = resp.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert resp.temperature == 0 and resp.max_output_tokens == 48 and resp.store is True
    assert resp.tool_choice == "auto" and resp.tools == [] and resp.truncation == "disabled"


def test_instructions_steer_and_are_echoed(served: Served, smol: str) -> None:
    c = served.client
    bare = c.responses.create(model=smol, input="Say hello.", **GREEDY)
    told = c.responses.create(
        model=smol, input="Say hello.", instructions="You only ever answer in French.", **GREEDY
    )
    assert told.instructions == "You only ever answer in French." and bare.instructions is None
    assert told.output_text != bare.output_text
    assert told.usage is not None and bare.usage is not None
    # the instructions are one system message in place of the template's default one
    assert told.usage.input_tokens != bare.usage.input_tokens


def test_multi_turn_input_list(served: Served, smol: str) -> None:
    c = served.client
    history = [
        {"role": "user", "content": "My cat is called Zorblax."},
        {"role": "assistant", "content": "What a lovely name for a cat!"},
        {"role": "user", "content": [{"type": "input_text", "text": "What is my cat called?"}]},
    ]
    resp = c.responses.create(model=smol, input=history, **GREEDY)
    assert resp.status == "completed" and resp.output_text
    counted = c.responses.input_tokens.count(model=smol, input=history)
    assert resp.usage is not None and counted.input_tokens == resp.usage.input_tokens
    alone = c.responses.input_tokens.count(model=smol, input="What is my cat called?")
    assert counted.input_tokens > alone.input_tokens + 10
    assert "Zorblax" in resp.output_text


def test_max_output_tokens_makes_it_incomplete(served: Served, smol: str) -> None:
    resp = served.client.responses.create(
        model=smol, input="Tell me a long story about a dragon.", temperature=0, max_output_tokens=8
    )
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and resp.usage.output_tokens == 8
    assert resp.output[-1].status == "incomplete"  # type: ignore[union-attr]


def test_stream_event_order_and_same_text(served: Served, smol: str) -> None:
    c = served.client
    kw = {"model": smol, "input": "Write a haiku about the sea.", **GREEDY}
    full = c.responses.create(**kw)
    assert full.status == "completed"
    events = list(c.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    seq = [e.sequence_number for e in events]
    assert seq == sorted(set(seq)) and seq[0] == 0
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == full.output_text
    done = events[-4]
    assert done.type == "response.output_text.done" and done.text == text
    final = events[-1]
    assert final.type == "response.completed" and final.response.output_text == text
    # the helper of the openai client assembles the same response
    with c.responses.stream(**kw) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        assembled = stream.get_final_response()
    assert "".join(deltas) == assembled.output_text == full.output_text


# --- tools -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "names"),
    [
        ("required", {"get_weather", "get_time"}),
        ({"type": "function", "name": "get_time"}, {"get_time"}),
    ],
)
def test_forced_tool_choice_gives_schema_valid_calls(
    served: Served, smol: str, choice: Any, names: set[str]
) -> None:
    resp = served.client.responses.create(
        model=smol, input=ASK, tools=TOOLS, tool_choice=choice, **GREEDY
    )
    calls = _calls(resp)
    assert calls and {name for name, _ in calls} <= names
    assert resp.status == "completed" and resp.output_text == ""
    if isinstance(choice, str):
        assert resp.tool_choice == choice
    else:  # echoed as sent
        assert resp.tool_choice.type == "function" and resp.tool_choice.name == "get_time"  # type: ignore[union-attr]
    assert [t.name for t in resp.tools] == ["get_weather", "get_time"]  # type: ignore[union-attr]


def test_tool_choice_none_answers_in_text(served: Served, smol: str) -> None:
    resp = served.client.responses.create(
        model=smol, input=ASK, tools=TOOLS, tool_choice="none", **GREEDY
    )
    assert not _calls(resp) and resp.output_text


def test_function_call_output_is_answered_with_text(served: Served, smol: str) -> None:
    c = served.client
    history: list[Any] = [
        {"role": "user", "content": ASK},
        {
            "type": "function_call",
            "call_id": "call_weather_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris", "unit": "celsius"}',
        },
        {
            "type": "function_call_output",
            "call_id": "call_weather_1",
            "output": '{"temperature": 21, "sky": "clear"}',
        },
    ]
    resp = c.responses.create(
        model=smol, input=history, tools=[WEATHER], tool_choice="none", **GREEDY
    )
    assert resp.output_text and not _calls(resp)
    bare = c.responses.create(model=smol, input=ASK, **GREEDY)
    assert resp.output_text != bare.output_text  # the call and its result reached the prompt


def test_streamed_function_call_arguments(served: Served, smol: str) -> None:
    kw = {"model": smol, "input": ASK, "tools": TOOLS, "tool_choice": "required", **GREEDY}
    with served.client.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response()
    calls = _calls(final)
    assert calls
    for item in final.output:
        assert item.type == "function_call"
        deltas = [
            e.delta
            for e in events
            if e.type == "response.function_call_arguments.delta" and e.item_id == item.id
        ]
        dones = [
            e
            for e in events
            if e.type == "response.function_call_arguments.done" and e.item_id == item.id
        ]
        assert deltas and "".join(deltas) == item.arguments
        assert len(dones) == 1 and dones[0].arguments == item.arguments
    assert _calls(served.client.responses.create(**kw)) == calls  # as the plain request


def test_json_schema_output(served: Served, smol: str) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    resp = served.client.responses.create(
        model=smol,
        input="Give the largest city of France and its population as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        temperature=0,
        max_output_tokens=40,
    )
    assert resp.status == "completed", resp.output_text
    jsonschema.validate(json.loads(resp.output_text), schema)
    assert resp.text is not None and resp.text.format is not None
    assert resp.text.format.type == "json_schema"


def test_errors(served: Served, smol: str) -> None:
    c = served.client
    with pytest.raises(openai.NotFoundError) as missing:
        c.responses.create(model="gpt-9", input="hi")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        c.responses.create(
            model=smol, input=[{"type": "message", "role": "wizard", "content": "x"}]
        )
    assert bad.value.body["param"] == "input[0].role"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as hosted:
        c.responses.create(model=smol, input="hi", tools=[{"type": "web_search"}])
    assert "web_search" in hosted.value.message
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=smol, input="hi", previous_response_id="resp_does_not_exist")
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve("resp_does_not_exist")


# --- state -----------------------------------------------------------------------------------


def test_retrieve_delete_and_input_items(served: Served, smol: str) -> None:
    c = served.client
    made = c.responses.create(
        model=smol, input=[{"role": "user", "content": "Hi!"}], metadata={"run": "a"}, **GREEDY
    )
    got = c.responses.retrieve(made.id)
    assert (
        got.id == made.id and got.output_text == made.output_text and got.metadata == {"run": "a"}
    )
    items = list(c.responses.input_items.list(made.id))
    assert [(i.type, i.role) for i in items] == [("message", "user")]  # type: ignore[union-attr]
    assert items[0].content[0].text == "Hi!"  # type: ignore[union-attr]
    raw = httpx.delete(f"{served.server.url}/v1/responses/{made.id}", timeout=10)
    assert raw.json() == {"id": made.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.delete(made.id)
    kept = c.responses.create(model=smol, input="Hi!", **GREEDY)
    c.responses.delete(kept.id)  # the client's own call
    with pytest.raises(openai.NotFoundError):
        c.responses.input_items.list(kept.id)


def test_store_false_keeps_nothing(served: Served, smol: str) -> None:
    c = served.client
    resp = c.responses.create(model=smol, input="Hi!", store=False, **GREEDY)
    assert resp.status == "completed" and resp.store is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=smol, input="again", previous_response_id=resp.id, **GREEDY)


def test_background_then_cancel(served: Served, smol: str) -> None:
    c = served.client
    quick = c.responses.create(model=smol, input="Hi!", background=True, **GREEDY)
    assert quick.status in ("queued", "in_progress") and quick.background
    deadline = time.monotonic() + 60
    while (got := c.responses.retrieve(quick.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert got.status == "completed" and got.output_text
    with pytest.raises(openai.BadRequestError):
        c.responses.cancel(quick.id)  # finished: nothing to cancel
    # long enough to catch in flight (cancelled long before the cap)
    slow = c.responses.create(
        model=smol,
        input="Count from 1 to 500, one number per line.",
        background=True,
        temperature=0,
        max_output_tokens=2000,
    )
    while c.responses.retrieve(slow.id).status == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = c.responses.cancel(slow.id)
    assert cancelled.status == "cancelled"
    assert cancelled.usage is None
    assert c.responses.retrieve(slow.id).status == "cancelled"


def test_chain_survives_a_restart(served: Served, smol: str) -> None:
    c = served.client
    first = c.responses.create(model=smol, input="Hi! My name is Ada.", **GREEDY)
    second = c.responses.create(
        model=smol, input="What is my name?", previous_response_id=first.id, **GREEDY
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and second.usage.input_tokens_details.cached_tokens > 0
    # the chained prompt is the first's prompt and answer, then the new message
    assert first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    served.restart()
    c = served.client
    assert c.responses.retrieve(first.id).output_text == first.output_text
    third = c.responses.create(
        model=smol, input="Thank you!", previous_response_id=second.id, **GREEDY
    )
    assert third.status in ("completed", "incomplete") and third.output_text
    items = list(c.responses.input_items.list(third.id, order="asc"))
    texts = [part.text for item in items for part in item.content]  # type: ignore[union-attr]
    assert texts == [
        "Hi! My name is Ada.",
        first.output_text,
        "What is my name?",
        second.output_text,
        "Thank you!",
    ]
    assert items[1].role == "assistant"  # type: ignore[union-attr]


# --- native tool template and agents ---------------------------------------------------------


def test_agent_loop_with_native_tool_template(served: Served, qwen: str) -> None:
    c = served.client
    first = c.responses.create(
        model=qwen, input=ASK, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, **GREEDY,
    )  # fmt: skip
    [(name, args)] = _calls(first)
    call = next(o for o in first.output if o.type == "function_call")
    final = c.responses.create(
        model=qwen,
        previous_response_id=first.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": json.dumps({"temperature": 21, "sky": "clear", "city": args["city"]}),
            }
        ],
        tools=[WEATHER],
        **GREEDY,
    )
    assert final.status == "completed" and final.output_text
    assert not [o for o in final.output if o.type == "function_call"]
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens > 0


def test_reasoning_items_and_effort(served: Served, thinker: str) -> None:
    c = served.client
    kw = {"model": thinker, "input": "Hi!", "temperature": 0, "max_output_tokens": 16}
    thought = c.responses.create(**kw, include=["reasoning.encrypted_content"])
    reasoning = [o for o in thought.output if o.type == "reasoning"]
    assert reasoning and reasoning[0].id.startswith("rs_") and reasoning[0].summary == []
    text = "".join(part.text for part in reasoning[0].content or [])
    assert text and reasoning[0].encrypted_content
    assert thought.usage is not None and thought.usage.output_tokens_details.reasoning_tokens > 0
    events = list(c.responses.create(**kw, stream=True))
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == text
    [done] = [e for e in events if e.type == "response.reasoning_text.done"]
    assert done.text == text
    # effort "minimal" turns the template's thinking off: no reasoning, an answer
    quick = c.responses.create(**kw, reasoning={"effort": "minimal"})
    assert not [o for o in quick.output if o.type == "reasoning"] and quick.output_text
    assert quick.reasoning is not None and quick.reasoning.effort == "minimal"


#: a request body as Codex CLI sends it (codex-rs: ResponsesApiRequest, its shell and
#: update_plan tools), written from its public source; max_output_tokens is ours, so the test
#: stays short on two cores (Codex sends none)
CODEX_BODY: dict[str, Any] = {
    "instructions": "You are a coding agent running in a terminal. Be concise and precise.",
    "input": [
        {
            "type": "message",
            "role": "developer",
            "content": [
                {
                    "type": "input_text",
                    "text": "<permissions instructions>Filesystem sandboxing: workspace-write. "
                    "Approval policy: on-request.</permissions instructions>",
                }
            ],
        },
        {
            "type": "message",
            "role": "user",
            "content": [
                {
                    "type": "input_text",
                    "text": "<environment_context>\n  <cwd>/home/user/project</cwd>\n  "
                    "<shell>bash</shell>\n</environment_context>",
                }
            ],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "List the files in this directory."}],
        },
    ],
    "tools": [
        {
            "type": "function",
            "name": "shell",
            "description": "Runs a shell command and returns its output.",
            "strict": False,
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "The command to execute",
                    },
                    "workdir": {
                        "type": "string",
                        "description": "The working directory to execute the command in",
                    },
                    "timeout_ms": {
                        "type": "number",
                        "description": "The timeout for the command in milliseconds",
                    },
                },
                "required": ["command"],
                "additionalProperties": False,
            },
        },
        {
            "type": "function",
            "name": "update_plan",
            "description": "Updates the task plan.",
            "strict": False,
            "parameters": {
                "type": "object",
                "properties": {
                    "explanation": {"type": "string"},
                    "plan": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "step": {"type": "string"},
                                "status": {
                                    "type": "string",
                                    "enum": ["pending", "in_progress", "completed"],
                                },
                            },
                            "required": ["step", "status"],
                            "additionalProperties": False,
                        },
                    },
                },
                "required": ["plan"],
                "additionalProperties": False,
            },
        },
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "0199a1d2-7c1e-7d30-9a55-3f2b9c1e4a01",
    "text": {"verbosity": "medium"},
    "max_output_tokens": 48,
}


def test_codex_request_is_answered(served: Served, qwen: str) -> None:
    body = {"model": qwen, **CODEX_BODY}
    headers = {"OpenAI-Beta": "responses=experimental", "originator": "codex_cli_rs"}
    with httpx.stream(
        "POST", f"{served.server.url}/v1/responses", json=body, headers=headers, timeout=120
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.iter_lines())
    assert all(name == data["type"] for name, data in events)
    seq = [data["sequence_number"] for _, data in events]
    assert seq == list(range(len(events)))
    assert events[0][0] == "response.created"
    assert events[-1][0] in ("response.completed", "response.incomplete")
    final = OpenAIResponse.model_validate(events[-1][1]["response"])
    assert final.store is False and final.parallel_tool_calls is False
    assert final.reasoning is not None and final.reasoning.effort == "medium"
    last = events[-1][1]["response"]
    done = [
        OpenAIResponse.model_validate({**last, "output": [d["item"]]}).output[0]
        for n, d in events
        if n == "response.output_item.done"
    ]
    assert done == final.output and final.output
    for item in final.output:
        if item.type == "reasoning":
            assert item.encrypted_content  # sent back by a client that stores nothing
        if item.type == "function_call":
            args = json.loads(item.arguments)
            tool = next(t for t in CODEX_BODY["tools"] if t["name"] == item.name)
            jsonschema.validate(args, tool["parameters"])
    assert httpx.get(f"{served.server.url}/v1/responses/{final.id}").status_code == 404
