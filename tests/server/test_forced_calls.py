"""A forced tool call ends the turn, for every tool-call format the detector knows.

The pipeline's plan (template, grammar, parser) is made for a real template of each format and
run on the real SmolLM2 engine, greedy: with ``tool_choice`` required or a named tool the
answer must be complete, schema-valid calls and the generation must stop on its own
(``finish_reason`` tool_calls), not run on to ``max_tokens`` (seen with Llama 3.1's format:
newlines, then the same call again and again). One end-to-end check through a real server and
the ``openai`` client follows, streamed and not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from ggufworker import chat_formats as cf
from ggufworker.engine import Engine
from ggufworker.engine.types import GenerationRequest, SamplingParams
from ggufworker.server.core.chat import ChatRequest, plan_chat
from tests.server.conftest import ServerProcess, cached_server, running

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            # bounded, so a format whose strings end with a marker SmolLM2 never writes
            # (Gemma 4's <|"|>) still ends its call
            "properties": {
                "city": {"type": "string", "description": "the city's name", "maxLength": 24}
            },
            "required": ["city"],
        },
    },
}
SCHEMA = TOOL["function"]["parameters"]  # type: ignore[index]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
MAX_TOKENS = 160
THINKING_BUDGET = 16
LLAMA31 = "meta-llama-Llama-3.1-8B-Instruct"


def _templates(models_dir: Path) -> dict[str, str]:
    """One real template per detected format (the first by file name)."""
    out: dict[str, str] = {}
    for path in sorted((models_dir / "templates").glob("*.jinja")):
        text = path.read_text()
        out.setdefault(cf.detect_format_name(text), text)
    return out


@pytest.fixture(scope="module")
def engine(smollm2_path: Path) -> Iterator[Engine]:
    eng = Engine.load(smollm2_path, n_ctx=8192, n_parallel=8, n_batch=512)
    yield eng
    eng.close()


@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_call_ends_the_turn_in_every_format(
    engine: Engine, llama_cpp_models_dir: Path, choice: str
) -> None:
    templates = _templates(llama_cpp_models_dir)
    # every registered format that some real template selects is covered
    assert len(templates) >= 25, sorted(templates)
    tool_choice: Any = (
        "required"
        if choice == "required"
        else {"type": "function", "function": {"name": "get_weather"}}
    )
    plans = {}
    handles = {}
    for name, template in templates.items():
        req = ChatRequest(
            messages=ASK,
            params=SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
            tools=[TOOL],
            tool_choice=tool_choice,
            # SmolLM2 does not think: a template that opens a thinking block would have it
            # think to max_tokens; the thinking budget closes the block (and the grammar,
            # re-fed the written end marker, then forces the call)
            reasoning_budget=THINKING_BUDGET,
        )
        plan = plan_chat(req, template=template, bos_token="", eos_token="<|im_end|>")
        if plan.params.tool_grammar is None:  # a format that cannot be forced
            continue
        plans[name] = plan
        handles[name] = engine.submit(
            GenerationRequest(prompt=plan.prompt, params=plan.params, parse_special=True)
        )
    assert len(handles) >= 25, sorted(set(templates) - set(handles))
    failures = []
    for name, handle in handles.items():
        text, final = "", None
        for event in handle:
            text += event.text
            if event.finish_reason is not None:
                final = event
        assert final is not None
        result = plans[name].parser.parse(text)
        if final.finish_reason != "stop" or not result.tool_calls:
            failures.append(
                f"{name}: {final.finish_reason}, {len(result.tool_calls)} call(s): {text!r}"
            )
            continue
        for call in result.tool_calls:
            assert call.name == "get_weather", name
            jsonschema.validate(json.loads(call.arguments), SCHEMA)
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def llama31_server(
    smollm2_with_template: Any, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    path = smollm2_with_template(LLAMA31)
    proc = cached_server(
        tmp_path_factory, "llama31-server", model_cache, "--model", str(path), "--parallel", "2"
    )
    with running(proc):
        yield proc


@pytest.mark.parametrize("stream", [False, True])
def test_required_call_ends_with_tool_calls_through_the_server(
    llama31_server: ServerProcess, stream: bool
) -> None:
    client = openai.OpenAI(base_url=f"{llama31_server.url}/v1", api_key="none", max_retries=0)
    kwargs: dict[str, Any] = dict(
        model=f"smollm2-{LLAMA31}",
        messages=ASK,
        tools=[TOOL],
        tool_choice="required",
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    if not stream:
        reply = client.chat.completions.create(**kwargs)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert len(calls) == 1 and reply.usage is not None
        assert reply.usage.completion_tokens < MAX_TOKENS
        jsonschema.validate(json.loads(calls[0].function.arguments), SCHEMA)
        return
    finish, args = None, ""
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            for call in c.delta.tool_calls or []:
                args += call.function.arguments or "" if call.function else ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    jsonschema.validate(json.loads(args), SCHEMA)
