"""The Anthropic Messages surface against a fake engine: the request's translation onto the chat
pipeline, error envelopes chosen by path (handlers and middleware), a failure mid-stream, and
the stream's keep-alive pings. Everything a client sees is also tested end to end with a real
model in test_anthropic_api.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ggufworker.errors import InvalidRequestError
from ggufworker.server.anthropic.protocol import CountTokensRequest, MessageCreateRequest
from ggufworker.server.anthropic.serving import tool_use_id, with_pings
from ggufworker.server.app import create_app
from ggufworker.settings_sources import resolve_settings
from tests.server.fake_engine import FakeFactory, fake_resolver

ASK = {"model": "alpha", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}


def make_client(factory: FakeFactory | None = None, **settings: Any) -> TestClient:
    settings.setdefault("models", ["alpha"])
    app = create_app(
        resolve_settings(settings), engine_factory=factory or FakeFactory(), resolver=fake_resolver
    )
    return TestClient(app)


@pytest.fixture
def factory() -> FakeFactory:
    return FakeFactory()


@pytest.fixture
def client(factory: FakeFactory) -> Iterator[TestClient]:
    with make_client(factory) as c:
        _wait_healthy(c)
        yield c


def _wait_healthy(c: TestClient) -> None:
    deadline = time.monotonic() + 5
    while c.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "server never became healthy"
        time.sleep(0.01)


def _error(response: Any, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body) == {"type", "error"}
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    return str(body["error"]["message"])


def _events(response: Any) -> list[tuple[str, Any]]:
    text = "".join(response.iter_text())
    out = []
    for chunk in text.split("\n\n"):
        if chunk:
            name, data = chunk.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            out.append((name[len("event: ") :], json.loads(data[len("data: ") :])))
    return out


# --- translation --------------------------------------------------------------------------


def test_conversation_becomes_template_messages() -> None:
    body = MessageCreateRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 8,
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Use tools."},
            ],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "I should call.", "signature": "s"},
                        {"type": "redacted_thinking", "data": "xyz"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "P"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "a"},
                                {"type": "text", "text": "b"},
                            ],
                        },
                        {"type": "text", "text": "Thanks."},
                    ],
                },
            ],
            "tools": [{"name": "w", "input_schema": {"type": "object"}, "cache_control": {}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "thinking": {"type": "enabled", "budget_tokens": 64},
            "stop_sequences": ["END", ""],
            "temperature": 0,
            "metadata": {"user_id": "u"},
            "unknown_field": 1,
        }
    )
    req = body.to_chat_request()
    assert req.messages == [
        {"role": "system", "content": "Be brief.\n\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c": "P"}'},
                }
            ],
            "reasoning_content": "I should call.",
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: a\nb"},
        {"role": "user", "content": "Thanks."},
    ]
    assert req.tools == [
        {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
    ]
    assert req.tool_choice == "required" and req.parallel_tool_calls is False
    assert req.template_kwargs == {"enable_thinking": True} and req.reasoning_budget == 64
    assert req.split_thinking is True
    assert req.params.stop == ("END",) and req.params.temperature == 0
    assert req.params.max_tokens == 8


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", True),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "none"}, "none", True),
        ({"type": "any"}, "required", False),  # a forced call ends the turn
        ({"type": "tool", "name": "w"}, {"type": "function", "function": {"name": "w"}}, False),
    ],
)
def test_tool_choice_mapping(choice: dict, expected: Any, parallel: bool) -> None:
    body = CountTokensRequest.model_validate(
        {**ASK, "tools": [{"name": "w", "input_schema": {"type": "object"}}], "tool_choice": choice}
    )
    req = body.to_chat_request()
    assert req.tool_choice == expected
    assert req.parallel_tool_calls is parallel


def test_defaults_and_images() -> None:
    req = MessageCreateRequest.model_validate(ASK).to_chat_request()
    assert req.params.temperature == 1.0  # Anthropic's default
    assert req.template_kwargs is None and req.reasoning_budget is None
    assert req.tool_choice is None and req.tools is None
    image = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "see"}, image]}]
    req = MessageCreateRequest.model_validate({**ASK, "messages": messages}).to_chat_request()
    # media stays a part: the pipeline names the model that cannot take it
    assert req.messages[0]["content"][1] == {"type": "image", "source": image["source"]}
    disabled = {**ASK, "thinking": {"type": "disabled"}}
    assert MessageCreateRequest.model_validate(disabled).to_chat_request().template_kwargs == {
        "enable_thinking": False
    }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
         "messages[1]"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tool_choice": {"type": "tool"}, "tools": [{"name": "f", "input_schema": {}}]},
         "tool_choice.name"),
        ({"messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "data": "x"}}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
         "messages[0].content[0]"),
    ],
)  # fmt: skip
def test_untranslatable_requests_name_the_field(extra: dict, param: str) -> None:
    body = MessageCreateRequest.model_validate({**ASK, **extra})
    with pytest.raises(InvalidRequestError) as info:
        body.to_chat_request()
    assert info.value.param == param


def test_plain_text_document_is_text() -> None:
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "D"}}
    messages = [{"role": "user", "content": [doc, {"type": "text", "text": "?"}]}]
    req = MessageCreateRequest.model_validate({**ASK, "messages": messages}).to_chat_request()
    assert req.messages == [{"role": "user", "content": "D?"}]


def test_tool_use_ids() -> None:
    assert tool_use_id("call_abc") == "toolu_abc"
    assert tool_use_id("toolu_x") == "toolu_x"
    assert tool_use_id("Ab3dE") == "toolu_Ab3dE"


# --- HTTP: shapes and envelopes -----------------------------------------------------------


def test_create_count_and_stream(client: TestClient) -> None:
    m = client.post("/v1/messages", json=ASK).json()
    assert m["type"] == "message" and m["content"][0]["type"] == "text"
    count = client.post("/v1/messages/count_tokens", json=ASK).json()
    u = m["usage"]
    assert u["input_tokens"] + u["cache_read_input_tokens"] == count["input_tokens"]
    with client.stream("POST", "/v1/messages", json={**ASK, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == m["content"][0]["text"]
    assert events[-2][1]["delta"]["stop_reason"] == m["stop_reason"]


def test_failure_mid_stream_is_an_error_event(client: TestClient, factory: FakeFactory) -> None:
    factory.engines[0].fail_after = 2
    with client.stream("POST", "/v1/messages", json={**ASK, "stream": True}) as r:
        assert r.status_code == 200
        events = _events(r)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "sequence failed"}},
    )
    assert "message_stop" not in [n for n, _ in events]
    _error(client.post("/v1/messages", json=ASK), 500, "api_error")


def test_validation_unknown_model_and_routes(client: TestClient) -> None:
    assert "max_tokens" in _error(
        client.post("/v1/messages", json={**ASK, "max_tokens": None}), 400, "invalid_request_error"
    )
    bad_json = client.post(
        "/v1/messages", content=b"{", headers={"content-type": "application/json"}
    )
    _error(bad_json, 400, "invalid_request_error")
    assert "nope" in _error(
        client.post("/v1/messages", json={**ASK, "model": "nope"}), 404, "not_found_error"
    )
    _error(client.post("/v1/messages/batches", json={}), 404, "not_found_error")
    _error(client.get("/v1/messages"), 405, "invalid_request_error")
    # the other surfaces keep their envelope
    assert set(client.get("/v1/nothing").json()) == {"error"}
    assert client.get("/v1/messagesx").json()["error"]["code"] == "not_found"


def test_middleware_errors_use_the_envelope_of_the_path(factory: FakeFactory) -> None:
    with make_client(factory, api_keys=["k1"], max_body_bytes=2048) as c:
        _error(c.post("/v1/messages", json=ASK), 401, "authentication_error")
        _error(c.post("/v1/messages", json=ASK, headers={"x-api-key": "no"}), 401,
               "authentication_error")  # fmt: skip
        assert c.get("/v1/models").json()["error"]["code"] == "invalid_api_key"
        ok = {"x-api-key": "k1"}
        assert c.get("/v1/models", headers=ok).status_code == 200  # x-api-key works everywhere
        assert c.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
        big = {**ASK, "messages": [{"role": "user", "content": "x" * 4000}]}
        _error(c.post("/v1/messages", json=big, headers=ok), 413, "request_too_large")
        r = c.post("/v1/chat/completions", json=big, headers=ok)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_queue_full_is_429_rate_limit_error(factory: FakeFactory) -> None:
    factory.kwargs = {"n_parallel": 1, "max_queue": 0}
    with make_client(factory) as c:
        _wait_healthy(c)
        factory.engines[0].delay = 0.05
        with c.stream("POST", "/v1/messages", json={**ASK, "stream": True}):
            r = c.post("/v1/messages", json=ASK)
            _error(r, 429, "rate_limit_error")
            assert r.headers["retry-after"]


# --- keep-alive pings ---------------------------------------------------------------------


def test_pings_while_the_source_is_silent_and_the_source_is_closed() -> None:
    closed: list[bool] = []

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.sleep(0.25)
            yield 2
            await asyncio.sleep(10)
            yield 3
        finally:
            closed.append(True)

    async def run() -> list[int | None]:
        seen: list[int | None] = []
        pings = with_pings(source(), 0.1)
        async for item in pings:
            seen.append(item)
            if item == 2:
                break
        await pings.aclose()  # type: ignore[attr-defined]
        return seen

    seen = asyncio.run(run())
    assert seen[0] == 1 and seen[-1] == 2 and None in seen
    assert closed == [True]


def test_a_cancelled_consumer_cancels_the_step_in_flight() -> None:
    closed: list[bool] = []

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.sleep(10)
            yield 2
        finally:
            closed.append(True)

    async def consume(seen: list[int | None]) -> None:
        async for item in with_pings(source(), 0.05):
            seen.append(item)

    async def run() -> list[int | None]:
        seen: list[int | None] = []
        task = asyncio.create_task(consume(seen))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)  # the step's cancellation runs on the next turn
        return seen

    seen = asyncio.run(run())
    assert seen[0] == 1 and None in seen
    assert closed == [True]


def test_client_going_away_mid_stream_frees_the_slot(
    client: TestClient, factory: FakeFactory
) -> None:
    engine = factory.engines[0]
    engine.delay = 0.2  # the whole answer (40 tokens) would take 8 s
    long = {**ASK, "max_tokens": 200, "stream": True}
    with client.stream("POST", "/v1/messages", json=long) as r:
        for line in r.iter_lines():
            if "content_block_delta" in line:
                break
    deadline = time.monotonic() + 3
    while engine.active:
        assert time.monotonic() < deadline, "the engine request was not cancelled"
        time.sleep(0.02)
