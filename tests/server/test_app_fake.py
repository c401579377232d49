"""Routing, protocol, errors and SSE against a fake engine (no llama.cpp, no network).

Every behaviour here is also exercised end to end with a real model in test_e2e_*.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ggufworker.server.app import create_app
from ggufworker.settings_sources import resolve_settings
from tests.server.fake_engine import FakeFactory, fake_answer, fake_resolver

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}


def make_client(factory: FakeFactory | None = None, **settings: Any) -> TestClient:
    settings.setdefault("models", ["alpha", "beta"])
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


def _events(response: Any) -> list[Any]:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _assert_envelope(response: Any, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


def test_chat_non_stream_shape_and_usage(client: TestClient, factory: FakeFactory) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "model": "alpha"})
    assert r.status_code == 200, r.text
    body = r.json()
    prompt = factory.engines[0].render_chat([{"role": "user", "content": "hello there"}])
    assert body["object"] == "chat.completion" and body["model"] == "alpha"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": fake_answer(prompt)}
    assert body["usage"]["prompt_tokens"] == len(prompt)
    assert body["usage"]["completion_tokens"] == len(fake_answer(prompt))
    assert body["usage"]["total_tokens"] == len(prompt) + len(fake_answer(prompt))


def test_unknown_fields_are_accepted(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "frobnicate": {"x": 1}, "store": True})
    assert r.status_code == 200, r.text


def test_chat_stream_matches_non_stream_and_reports_usage(client: TestClient) -> None:
    full = client.post("/v1/chat/completions", json=CHAT).json()
    req = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == full["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]


def test_stream_without_include_usage_has_no_usage_key(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        chunks = _events(r)[:-1]
    assert all("usage" not in c for c in chunks)


def test_completions_max_tokens_stop_and_logprobs(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "abcdefgh", "max_tokens": 3, "logprobs": 2})
    choice = r.json()["choices"][0]
    assert choice["text"] == "hgf" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == ["h", "g", "f"]
    assert [len(t) for t in choice["logprobs"]["top_logprobs"]] == [2, 2, 2]
    r = client.post("/v1/completions", json={"prompt": "abcdefgh", "stop": ["fe"]})
    choice = r.json()["choices"][0]
    assert "fe" not in choice["text"] and choice["finish_reason"] == "stop"


def test_max_completion_tokens_wins_over_max_tokens(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 9, "max_completion_tokens": 2}
    )
    assert r.json()["usage"]["completion_tokens"] == 2


def test_n_choices_each_complete(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "n": 3, "seed": 5})
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert len({c["message"]["content"] for c in choices}) == 1  # fake engine is deterministic
    with client.stream(
        "POST", "/v1/completions", json={"prompt": "xyz", "n": 2, "stream": True}
    ) as s:
        chunks = _events(s)[:-1]
    texts = {
        i: "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i)
        for i in (0, 1)
    }
    assert texts == {0: "zyx", 1: "zyx"}


def test_models_lists_served_and_routes_by_name(client: TestClient) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["alpha", "beta"]
    r = client.post("/v1/completions", json={"model": "beta", "prompt": "q"})
    assert r.json()["model"] == "beta"
    assert client.get("/v1/models/beta").json()["loaded"] is True


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "temperature": 7}, "temperature"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "top_logprobs": 50}, "top_logprobs"),
        ({**CHAT, "n": 1000}, "n"),
        ({**CHAT, "response_format": {"type": "xml"}}, "response_format.type"),
    ],
)
def test_invalid_input_is_400_envelope(client: TestClient, body: dict, param: str) -> None:
    err = _assert_envelope(client.post("/v1/chat/completions", json=body), 400, "invalid_value")
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_bad_json_is_400(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    _assert_envelope(r, 400, "invalid_value")


def test_unknown_model_is_404(client: TestClient) -> None:
    err = _assert_envelope(
        client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404, "model_not_found"
    )
    assert err["param"] == "model"


def test_context_overflow_is_400(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "x" * 600})
    _assert_envelope(r, 400, "context_length_exceeded")


def test_queue_full_is_429_with_retry_after(factory: FakeFactory) -> None:
    factory.kwargs = {"n_parallel": 1, "max_queue": 0}
    with make_client(factory) as c:
        _wait_healthy(c)
        factory.engines[0].delay = 0.05
        with c.stream("POST", "/v1/completions", json={"prompt": "abcdef", "stream": True}) as s:
            r = c.post("/v1/completions", json={"prompt": "abc"})
            _assert_envelope(r, 429, "queue_full")
            assert r.headers["retry-after"]
            assert _events(s)[-1] == "[DONE]"


def test_body_too_large_is_413() -> None:
    with make_client(max_body_bytes=2048) as c:
        r = c.post("/v1/completions", json={"prompt": "x" * 4000})
        _assert_envelope(r, 413, "request_too_large")


def test_api_keys(factory: FakeFactory) -> None:
    with make_client(factory, api_keys=["k1", "k2"]) as c:
        assert c.get("/health").status_code in (200, 503)  # no auth on health
        _assert_envelope(c.get("/v1/models"), 401, "invalid_api_key")
        _assert_envelope(
            c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key"
        )
        for key in ("k1", "k2"):
            assert (
                c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
            )


def test_failure_mid_stream_sends_error_then_done(client: TestClient, factory: FakeFactory) -> None:
    factory.engines[0].fail_after = 2
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        events = _events(r)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["message"] == "sequence failed"
    r = client.post("/v1/chat/completions", json=CHAT)
    _assert_envelope(r, 500, None)


def test_health_is_503_while_loading() -> None:
    import threading

    gate = threading.Event()

    class SlowFactory(FakeFactory):
        def __call__(self, *a: Any) -> Any:
            gate.wait(5)
            return super().__call__(*a)

    with make_client(SlowFactory()) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        gate.set()
        _wait_healthy(c)


def test_idle_unload_and_pinning(factory: FakeFactory) -> None:
    with make_client(factory, keep_alive=0.2, pin=["beta"]) as c:
        _wait_healthy(c)
        c.post("/v1/completions", json={"model": "alpha", "prompt": "a"})
        deadline = time.monotonic() + 5
        while True:
            models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
            if not models["alpha"]["loaded"]:
                break
            assert time.monotonic() < deadline, "idle model was never unloaded"
            time.sleep(0.05)
        assert models["beta"]["loaded"] and models["beta"]["pinned"]
        loads = factory.loads
        r = c.post("/v1/completions", json={"model": "alpha", "prompt": "abc"})
        assert r.json()["choices"][0]["text"] == "cba"
        assert factory.loads == loads + 1


def test_tokenize_detokenize_and_metrics(client: TestClient) -> None:
    ids = client.post("/tokenize", json={"content": "hey"}).json()["tokens"]
    assert client.post("/detokenize", json={"tokens": ids}).json()["content"] == "hey"
    client.post("/v1/completions", json={"prompt": "abcd", "max_tokens": 2})
    text = client.get("/metrics").text
    assert 'ggufworker_requests_total{endpoint="/v1/completions",status="200"} 1.0' in text
    assert 'ggufworker_generation_tokens_total{model="alpha"} 2.0' in text
    assert 'ggufworker_prompt_tokens_total{model="alpha"} 4.0' in text
    assert 'ggufworker_slots{model="alpha"} 2.0' in text


def test_embeddings_need_an_embedding_model(factory: FakeFactory) -> None:
    with make_client(factory, embedding_models=["emb"]) as c:
        _wait_healthy(c)
        r = c.post("/v1/embeddings", json={"model": "emb", "input": ["a", "bcd"]})
        data = r.json()["data"]
        assert [d["index"] for d in data] == [0, 1] and data[1]["embedding"][0] == 3.0
        # a model served for the other kind of request: a 400 that says so
        r = c.post("/v1/embeddings", json={"model": "alpha", "input": "a"})
        _assert_envelope(r, 400, "model_not_supported")
        assert "served for generation only" in r.json()["error"]["message"]
        chat = {"model": "emb", "messages": [{"role": "user", "content": "hi"}]}
        r = c.post("/v1/chat/completions", json=chat)
        _assert_envelope(r, 400, "model_not_supported")
        _assert_envelope(
            c.post("/v1/embeddings", json={"model": "nope", "input": "a"}), 404, "model_not_found"
        )


def test_execute_worker_events(client: TestClient) -> None:
    body = {"job_id": "j1", "prompt": "abcdef", "max_tokens": 4, "temperature": 0}
    with client.stream("POST", "/execute", json=body) as r:
        events = _events(r)
    assert events[0]["type"] == "started" and events[0]["job_id"] == "j1"
    tokens = [e for e in events if e["type"] == "token"]
    assert [e["i"] for e in tokens] == [0, 1, 2, 3]
    assert "".join(e["t"] for e in tokens) == "fedc"
    assert events[-1]["type"] == "end" and events[-1]["tokens_out"] == 4
    assert events[-1]["stop_reason"] == "length"


def test_unexpected_error_is_500_without_traceback(factory: FakeFactory) -> None:
    import asyncio

    import httpx

    def boom(req: Any) -> Any:
        raise RuntimeError("secret internals /path/to/file.py line 3")

    app = create_app(resolve_settings({}), engine_factory=factory, resolver=fake_resolver)

    async def scenario() -> tuple[httpx.Response, int]:
        async with app.router.lifespan_context(app):
            await app.state.manager.startup_done.wait()
            factory.engines[0].submit = boom
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                r = await c.post("/v1/chat/completions", json=CHAT)
                health = await c.get("/health")
        return r, health.status_code

    r, health = asyncio.run(scenario())
    err = _assert_envelope(r, 500, "internal_error")
    assert err["message"] == "internal server error" and "secret" not in r.text
    assert health == 200  # still serving


def test_cors_off_unless_configured() -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
    }
    with make_client() as c:
        r = c.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    with make_client(cors_origins=["https://app.example"]) as c:
        r = c.options("/v1/chat/completions", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.options(
            "/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"


def test_tools_are_passed_to_the_chat_template(client: TestClient, factory: FakeFactory) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = client.post("/v1/chat/completions", json={**CHAT, "tools": tools})
    assert r.status_code == 200
    assert factory.engines[0].last_tools == tools
    client.post("/v1/chat/completions", json=CHAT)
    assert factory.engines[0].last_tools is None
