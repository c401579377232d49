"""The Responses API without llama.cpp: the event builder, the item translation, the SQLite
store, and the routes over the fake engine (background runs, cancel, truncation, cursors).

Every behaviour that matters is also tested end to end with a real model and the openai client
in test_responses_e2e.py.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai.types.responses import Response as OpenAIResponse
from openai.types.responses import ResponseItemList

from ggufworker import chat_formats as cf
from ggufworker.errors import GenerationError, InvalidRequestError
from ggufworker.server.app import create_app
from ggufworker.server.core.chat import ChatAnswer, ChatUsage
from ggufworker.server.openai.responses.events import ResponseBuilder
from ggufworker.server.openai.responses.items import items_to_messages, normalize_input
from ggufworker.server.openai.responses.objects import (
    ResponseObject,
    open_reasoning,
    seal_reasoning,
)
from ggufworker.server.openai.responses.store import ResponseStore
from ggufworker.settings_sources import resolve_settings
from tests.server.fake_engine import FakeFactory, fake_answer, fake_resolver

# --- the builder -----------------------------------------------------------------------------


def _builder(seal: bool = False) -> ResponseBuilder:
    base = ResponseObject(
        id="resp_1", created_at=1, status="in_progress", model="m", temperature=0.0, top_p=1.0
    )
    return ResponseBuilder(base, seal=seal)


def _answer(finish: str = "stop") -> ChatAnswer:
    return ChatAnswer(0, "", "", [], finish, None, 5)


USAGE = ChatUsage(prompt_tokens=10, completion_tokens=5, cached_tokens=4, reasoning_tokens=2)


def test_builder_reasoning_text_and_calls_in_order() -> None:
    b = _builder(seal=True)
    events = b.start()
    deltas = [
        cf.StreamDelta(reasoning="let me "),
        cf.StreamDelta(reasoning="think"),
        cf.StreamDelta(content="Checking."),
        cf.StreamDelta(tool_calls=[cf.ToolCallDelta(0, "call_a", "f", '{"x"')]),
        cf.StreamDelta(tool_calls=[cf.ToolCallDelta(0, arguments=": 1}")]),
        cf.StreamDelta(tool_calls=[cf.ToolCallDelta(1, "call_b", "g", "{}")]),
    ]
    for d in deltas:
        events += b.feed(d)
    events += b.finish(_answer("tool_calls"), USAGE)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = OpenAIResponse.model_validate(events[-1]["response"])  # the openai client's type
    reasoning, message, call_a, call_b = final.output
    assert reasoning.type == "reasoning" and reasoning.content
    assert reasoning.content[0].text == "let me think"
    assert open_reasoning(reasoning.encrypted_content or "") == "let me think"
    assert message.type == "message" and final.output_text == "Checking."
    assert call_a.type == "function_call" and call_a.arguments == '{"x": 1}'
    assert call_a.call_id == "call_a" and call_b.type == "function_call" and call_b.name == "g"
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 4
    assert final.usage.output_tokens_details.reasoning_tokens == 2
    assert final.usage.total_tokens == 15


def test_builder_length_is_incomplete_and_failure_is_failed() -> None:
    b = _builder()
    b.start()
    b.feed(cf.StreamDelta(content="partial"))
    done = b.finish(_answer("length"), USAGE)
    final = done[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"

    b = _builder()
    b.start()
    b.feed(cf.StreamDelta(content="partial"))
    failed = b.fail(GenerationError("sequence failed"))[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "sequence failed"}


def test_builder_empty_answer_is_one_empty_message() -> None:
    b = _builder()
    b.start()
    final = OpenAIResponse.model_validate(b.finish(_answer(), USAGE)[-1]["response"])
    assert [o.type for o in final.output] == ["message"]
    assert final.output_text == ""


# --- items to messages -----------------------------------------------------------------------


def test_items_become_template_messages() -> None:
    items = normalize_input(
        [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "reasoning", "summary": [], "encrypted_content": seal_reasoning("hmm")},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": "It is sunny."},
        ]
    )
    assert all(item["id"] for item in items)
    messages = items_to_messages(items, instructions="You help.")
    assert messages == [
        {"role": "system", "content": "You help.\n\nbe brief"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "hmm",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny", "name": "w"},
        {"role": "assistant", "content": "It is sunny."},
    ]


def test_reasoning_of_earlier_turns_stays_out_unless_all_turns() -> None:
    items = normalize_input(
        [
            {"role": "user", "content": "a"},
            {
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "t"}],
            },
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ]
    )
    assert "reasoning_content" not in items_to_messages(items, instructions=None)[1]
    kept = items_to_messages(items, instructions=None, all_turns=True)[1]
    assert kept == {"role": "assistant", "content": "b", "reasoning_content": "t"}


def test_images_pass_through_as_media_parts() -> None:
    items = normalize_input(
        [{"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}]
    )
    content = items_to_messages(items, instructions=None)[0]["content"]
    assert content == [{"type": "image", "image_url": "data:x"}]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ([{"type": "message", "role": "wizard", "content": "x"}], "input[0].role"),
        ([{"type": "web_search_call", "id": "ws_1"}], "input[0].type"),
        (
            [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
            "input[0].content[0]",
        ),
        ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
        (["just a string"], "input[0]"),
    ],
)
def test_bad_items_name_their_place(raw: list[Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        normalize_input(raw)
    assert info.value.param == param


# --- the store -------------------------------------------------------------------------------


def _body(rid: str, created: float, status: str = "completed", pad: int = 0) -> dict[str, Any]:
    return {"id": rid, "created_at": created, "status": status, "pad": "x" * pad}


def test_store_survives_reopening_and_deletes(tmp_path: Path) -> None:
    import asyncio

    async def scenario() -> None:
        path = tmp_path / "r.sqlite3"
        store = ResponseStore(path, max_bytes=10**6)
        await store.put(_body("resp_a", time.time()), [{"id": "msg_1"}])
        await store.close()
        again = ResponseStore(path, max_bytes=10**6)
        got = await again.get("resp_a")
        assert got is not None and got.items == [{"id": "msg_1"}]
        assert await again.delete("resp_a") is True
        assert await again.delete("resp_a") is False
        assert await again.get("resp_a") is None
        await again.close()

    asyncio.run(scenario())


def test_store_prunes_oldest_by_size_and_by_age(tmp_path: Path) -> None:
    import asyncio

    async def scenario() -> None:
        store = ResponseStore(tmp_path / "r.sqlite3", max_bytes=3000, max_age_s=3600)
        now = time.time()
        await store.put(_body("old", now - 7200), [])  # past the age limit
        for i in range(5):
            await store.put(_body(f"r{i}", now + i, pad=900), [])
        kept = [rid for rid in ["old", "r0", "r1", "r2", "r3", "r4"] if await store.get(rid)]
        assert kept == ["r2", "r3", "r4"]  # the newest that fit in 3000 bytes
        await store.close()

    asyncio.run(scenario())


def test_store_takes_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    stores = [ResponseStore(path, max_bytes=10**7) for _ in range(2)]  # two "processes"

    def write(store: ResponseStore, prefix: str) -> None:
        for i in range(40):
            store._put(_body(f"{prefix}{i}", time.time()), [{"id": str(i)}])

    threads = [threading.Thread(target=write, args=(stores[i % 2], f"t{i}-")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    count = sqlite3.connect(path).execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert count == 160


def test_store_fails_what_a_dead_process_left_running(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    ResponseStore(path, max_bytes=10**6)._put(_body("resp_bg", time.time(), "in_progress"), [])
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE responses SET owner = 999999999")  # no such process
    got = ResponseStore(path, max_bytes=10**6)._get("resp_bg")
    assert got is not None and got.status == "failed" and got.body["error"]["message"]


# --- routes over the fake engine -------------------------------------------------------------


@pytest.fixture
def factory() -> FakeFactory:
    return FakeFactory()


def _client(factory: FakeFactory, **settings: Any) -> TestClient:
    settings.setdefault("models", ["alpha"])
    app = create_app(resolve_settings(settings), engine_factory=factory, resolver=fake_resolver)
    return TestClient(app)


@pytest.fixture
def client(factory: FakeFactory) -> Iterator[TestClient]:
    with _client(factory) as c:
        deadline = time.monotonic() + 5
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield c


def test_create_shape_matches_the_openai_type(client: TestClient) -> None:
    r = client.post("/v1/responses", json={"input": "hello there", "metadata": {"k": "v"}})
    assert r.status_code == 200, r.text
    resp = OpenAIResponse.model_validate(r.json())
    assert resp.id.startswith("resp_") and resp.status == "completed"
    assert resp.output_text == fake_answer("<user>hello there<assistant>")
    assert resp.metadata == {"k": "v"} and resp.store is True


def test_input_items_cursor_pages(client: TestClient) -> None:
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    rid = client.post("/v1/responses", json={"input": items}).json()["id"]
    url = f"/v1/responses/{rid}/input_items"
    first = ResponseItemList.model_validate(client.get(url, params={"limit": 2}).json())
    assert first.has_more and len(first.data) == 2
    texts = [
        client.get(url, params={"order": "asc"}).json()["data"][i]["content"][0]["text"]
        for i in range(5)
    ]
    assert texts == [f"m{i}" for i in range(5)]
    assert first.data[0].content[0].text == "m4"  # type: ignore[union-attr]
    rest = client.get(url, params={"limit": 10, "after": first.last_id}).json()
    assert [d["content"][0]["text"] for d in rest["data"]] == ["m2", "m1", "m0"]
    assert rest["has_more"] is False
    assert client.get(url, params={"after": "msg_nope"}).status_code == 400


def test_background_runs_and_cancels(factory: FakeFactory) -> None:
    factory.kwargs["n_parallel"] = 2
    with _client(factory) as c:
        while c.get("/health").status_code != 200:
            time.sleep(0.01)
        factory.engines[0].delay = 0.05  # 40 characters: about two seconds
        r = c.post("/v1/responses", json={"input": "x" * 60, "background": True}).json()
        assert r["status"] == "queued" and r["background"] is True
        deadline = time.monotonic() + 5
        while c.get(f"/v1/responses/{r['id']}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cancelled = c.post(f"/v1/responses/{r['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        assert c.get(f"/v1/responses/{r['id']}").json()["status"] == "cancelled"
        assert c.post(f"/v1/responses/{r['id']}/cancel").json()["status"] == "cancelled"

        factory.engines[0].delay = 0.001
        done = c.post("/v1/responses", json={"input": "abc", "background": True}).json()
        while c.get(f"/v1/responses/{done['id']}").json()["status"] in ("queued", "in_progress"):
            time.sleep(0.02)
        assert c.get(f"/v1/responses/{done['id']}").json()["status"] == "completed"
        again = c.post(f"/v1/responses/{done['id']}/cancel")
        assert again.status_code == 400 and "finished" in again.json()["error"]["message"]
        plain = c.post("/v1/responses", json={"input": "abc"}).json()
        assert c.post(f"/v1/responses/{plain['id']}/cancel").status_code == 400


def test_background_stream_follows_the_run(client: TestClient) -> None:
    body = {"input": "stream in the background", "background": True, "stream": True}
    with client.stream("POST", "/v1/responses", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and events[0]["response"]["status"] == "queued"
    assert kinds[1] == "response.in_progress" and kinds[-1] == "response.completed"
    rid = events[0]["response"]["id"]
    assert client.get(f"/v1/responses/{rid}").json()["output"] == events[-1]["response"]["output"]


def test_background_needs_store(client: TestClient) -> None:
    r = client.post("/v1/responses", json={"input": "x", "background": True, "store": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "background"


def test_truncation_auto_drops_oldest_turns(factory: FakeFactory) -> None:
    # the fake context is 512 characters; six long turns do not fit, the last ones do
    turns: list[dict[str, str]] = []
    for i in range(6):
        turns.append({"role": "user", "content": f"q{i}" + "u" * 60})
        turns.append({"role": "assistant", "content": f"a{i}" + "v" * 60})
    turns.append({"role": "user", "content": "last question"})
    with _client(factory) as c:
        while c.get("/health").status_code != 200:
            time.sleep(0.01)
        too_long = c.post("/v1/responses", json={"input": turns})
        assert too_long.status_code == 400
        assert too_long.json()["error"]["code"] == "context_length_exceeded"
        assert too_long.json()["error"]["param"] == "input"
        body = {"input": turns, "truncation": "auto", "instructions": "sys"}
        r = c.post("/v1/responses", json=body)
        assert r.status_code == 200, r.text
        prompt = factory.engines[0].submitted[-1].prompt
        assert isinstance(prompt, str)
        assert prompt.startswith("<system>sys") and "last question" in prompt
        assert "q0" not in prompt and len(prompt) <= 512 - 512 // 4
        counted = c.post("/v1/responses/input_tokens", json=body).json()["input_tokens"]
        assert counted == r.json()["usage"]["input_tokens"]


def test_errors_name_the_field(client: TestClient) -> None:
    cases = [
        (
            {"input": "x", "tools": [{"type": "code_interpreter"}]},
            "tools[0].type",
            "code_interpreter",
        ),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "name"),
        ({"input": "x", "conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({}, "input", "required"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice", "file_search"),
    ]
    for body, param, word in cases:
        r = client.post("/v1/responses", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["param"] == param and word in r.json()["error"]["message"]
    missing = client.post("/v1/responses", json={"input": "x", "previous_response_id": "resp_0"})
    assert missing.status_code == 404
    assert client.delete("/v1/responses/resp_0").status_code == 404
    assert client.get("/v1/responses/resp_0/input_items").status_code == 404


def test_failure_mid_way_is_response_failed_and_stored(
    client: TestClient, factory: FakeFactory
) -> None:
    factory.engines[0].fail_after = 3
    with client.stream("POST", "/v1/responses", json={"input": "abcdefgh", "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"] == "sequence failed"
    assert failed["output"][0]["status"] == "incomplete"
    assert client.get(f"/v1/responses/{failed['id']}").json()["status"] == "failed"
    plain = client.post("/v1/responses", json={"input": "abcdefgh"})
    assert plain.status_code == 500 and plain.json()["error"]["message"] == "sequence failed"
    factory.engines[0].fail_after = None
    assert client.post("/v1/responses", json={"input": "abcdefgh"}).status_code == 200


def test_shutdown_fails_running_background_responses(factory: FakeFactory) -> None:
    with _client(factory) as c:
        while c.get("/health").status_code != 200:
            time.sleep(0.01)
        factory.engines[0].delay = 0.2
        rid = c.post("/v1/responses", json={"input": "x" * 60, "background": True}).json()["id"]
    with _client(FakeFactory()) as c:  # the next server on the same home
        got = c.get(f"/v1/responses/{rid}").json()
        assert got["status"] == "failed" and "shut down" in got["error"]["message"]
