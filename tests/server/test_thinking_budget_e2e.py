"""The thinking budget through /v1/chat/completions (``reasoning_budget``, an extension),
with a real server and the ``openai`` client. SmolLM2 carries an R1-style template whose prompt
opens the thinking block; SmolLM2 never closes it by itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.server.conftest import ServerProcess, cached_server, running

R1 = "llama-cpp-deepseek-r1"
MODEL = f"smollm2-{R1}"
ASK = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def server(
    smollm2_with_template: Any, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    path = smollm2_with_template(R1)
    proc = cached_server(
        tmp_path_factory, "budget-server", model_cache, "--model", str(path), "--parallel", "2"
    )
    with running(proc):
        yield proc


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def _tokens(server: ServerProcess, text: str) -> int:
    import httpx

    reply = httpx.post(f"{server.url}/tokenize", json={"content": text, "model": MODEL})
    return len(reply.json()["tokens"])


def test_budget_caps_reasoning_and_the_answer_follows(server: ServerProcess) -> None:
    client = _client(server)
    args: dict[str, Any] = dict(model=MODEL, messages=ASK, max_tokens=40, temperature=0)
    free = client.chat.completions.create(**args)
    free_reasoning = getattr(free.choices[0].message, "reasoning_content", None) or ""
    # without a budget SmolLM2 thinks to the token limit and never answers
    assert free.choices[0].finish_reason == "length"
    assert not free.choices[0].message.content and free_reasoning
    capped = client.chat.completions.create(**args, extra_body={"reasoning_budget": 10})
    message = capped.choices[0].message
    reasoning = getattr(message, "reasoning_content", None) or ""
    assert reasoning and message.content
    assert _tokens(server, reasoning) <= 11
    # the capped thinking is the start of the free one (the same greedy tokens)
    assert free_reasoning.startswith(reasoning.rstrip())

    # streamed: the same split
    parts: dict[str, str] = {"reasoning": "", "content": ""}
    stream = client.chat.completions.create(
        **args, stream=True, extra_body={"reasoning_budget": 10}
    )
    for chunk in stream:
        for choice in chunk.choices:
            parts["reasoning"] += getattr(choice.delta, "reasoning_content", None) or ""
            parts["content"] += choice.delta.content or ""
    assert parts == {"reasoning": reasoning, "content": message.content}


def test_negative_budget_is_a_400(server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError):
        _client(server).chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=8, extra_body={"reasoning_budget": -1}
        )
