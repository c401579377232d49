"""Every HTTP error end to end: status, OpenAI envelope, and the server keeps serving."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from tests.conftest import SMOLLM2
from tests.server.conftest import KEYS, ServerProcess

MSG = [{"role": "user", "content": "Hello"}]


def _envelope(r: httpx.Response, status: int, code: str | None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["message"]
    assert "Traceback" not in r.text
    return err


def _oa(server: ServerProcess, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def test_bad_json_is_400(main_server: ServerProcess) -> None:
    r = httpx.post(
        f"{main_server.url}/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
    )
    _envelope(r, 400, "invalid_value")


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"stop": 5}, "stop"),
    ],
)
def test_wrong_types_are_400_through_the_client(
    main_server: ServerProcess, extra: dict, param: str
) -> None:
    body = {"model": SMOLLM2, "messages": MSG, **extra}
    with pytest.raises(openai.BadRequestError) as info:
        _oa(main_server).chat.completions.create(**body)
    assert info.value.status_code == 400
    assert info.value.body["param"].startswith(param)


def test_unknown_model_is_404(main_server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        _oa(main_server).chat.completions.create(model="gpt-4o", messages=MSG)
    assert info.value.code == "model_not_found"


def test_context_overflow_is_400(main_server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _oa(main_server).completions.create(model=SMOLLM2, prompt="hello " * 5000, max_tokens=4)
    assert info.value.code == "context_length_exceeded"
    # still serving
    r = _oa(main_server).completions.create(model=SMOLLM2, prompt="Hi", max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_non_text_content_is_400(main_server: ServerProcess) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as info:
        _oa(main_server).chat.completions.create(
            model=SMOLLM2, messages=[{"role": "user", "content": [image]}]
        )
    # an image to a model without a projector: the 400 names the model, never a 500
    assert info.value.body["param"] == "messages[0].content"
    assert SMOLLM2 in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        _oa(main_server).chat.completions.create(
            model=SMOLLM2, messages=[{"role": "user", "content": [{"type": "video", "x": 1}]}]
        )
    assert info.value.body["param"] == "messages"


def test_body_too_large_is_413(main_server: ServerProcess) -> None:
    big = {"model": SMOLLM2, "prompt": "x" * 100_000}
    _envelope(httpx.post(f"{main_server.url}/v1/completions", json=big), 413, "request_too_large")
    chunked = httpx.post(
        f"{main_server.url}/v1/completions",
        content=iter([b'{"prompt": "', b"y" * 70_000, b'"}']),
        headers={"content-type": "application/json"},
    )
    _envelope(chunked, 413, "request_too_large")


def test_unknown_route_is_404_envelope(main_server: ServerProcess) -> None:
    _envelope(httpx.get(f"{main_server.url}/v1/nothing"), 404, "not_found")


def test_api_keys(tight_server: ServerProcess) -> None:
    assert httpx.get(f"{tight_server.url}/health").status_code == 200  # no auth on health
    with pytest.raises(openai.AuthenticationError) as info:
        _oa(tight_server, "wrong-key").models.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    _envelope(httpx.get(f"{tight_server.url}/v1/models"), 401, "invalid_api_key")
    for key in KEYS:
        assert [m.id for m in _oa(tight_server, key).models.list().data] == [SMOLLM2]


def _busy_slots(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}).text
    m = re.search(r'^ggufworker_busy_slots\{model="[^"]+"\} (\S+)$', text, re.M)
    assert m, text
    return float(m.group(1))


def test_queue_full_is_429_then_disconnect_frees_the_slot(tight_server: ServerProcess) -> None:
    client = _oa(tight_server, KEYS[0])
    stream = client.chat.completions.create(
        model=SMOLLM2,
        messages=MSG,
        max_tokens=2000,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    it = iter(stream)
    assert next(it).choices[0].delta.role == "assistant"
    next(it)
    assert _busy_slots(tight_server) == 1
    # one slot, no queue: the next request is refused with Retry-After
    r = httpx.post(
        f"{tight_server.url}/v1/chat/completions",
        json={"model": SMOLLM2, "messages": MSG, "max_tokens": 2},
        headers={"Authorization": f"Bearer {KEYS[1]}"},
    )
    _envelope(r, 429, "queue_full")
    assert int(r.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=SMOLLM2, messages=MSG, max_tokens=2)
    # the client goes away mid-stream: its request is cancelled and the slot freed
    stream.close()
    deadline = time.monotonic() + 10
    while _busy_slots(tight_server) != 0:
        assert time.monotonic() < deadline, "slot still busy after the client disconnected"
        time.sleep(0.05)
    r2 = client.chat.completions.create(model=SMOLLM2, messages=MSG, max_tokens=2)
    assert r2.usage.completion_tokens == 2


def test_non_streamed_client_disconnect_frees_the_slot(tight_server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    body = {"model": SMOLLM2, "messages": MSG, "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{tight_server.url}/v1/chat/completions", json=body, headers=headers, timeout=1.5
        )
    deadline = time.monotonic() + 10
    while _busy_slots(tight_server) != 0:
        assert time.monotonic() < deadline, "slot still busy after the client went away"
        time.sleep(0.05)
    r = _oa(tight_server, KEYS[0]).chat.completions.create(
        model=SMOLLM2, messages=MSG, max_tokens=2
    )
    assert r.usage.completion_tokens == 2
