"""Tool grammars on a real model: for every format, a ``required`` / named grammar makes
SmolLM2 write that format's syntax, and the format's parser reads back a call whose
arguments validate against the tool's schema (the grammar and the parser agree)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from ggufworker import chat_formats as cf
from ggufworker.engine import Engine
from ggufworker.engine.types import GenerationRequest, SamplingParams

from .helpers import USER

# short strings keep a 135M model from rambling inside a forced argument
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 12},
                    "days": {"type": "integer"},
                },
                "required": ["city", "days"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_web",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "maxLength": 16}},
                "required": ["query"],
            },
        },
    },
]
SCHEMAS = cf.tool_schemas(TOOLS)
FORCED = sorted(n for n, cls in cf.registered().items() if cls().grammar_shape() is not None)
# one format per parser family (JSON envelope, bare JSON, name + JSON, tagged parameters,
# channels, Python calls, Gemma objects): generated in full, one batch of 8
GENERATED = [
    "hermes", "llama3_json", "mistral_v11", "qwen3_coder", "glm", "harmony", "lfm2", "gemma4",
]  # fmt: skip


@pytest.fixture(scope="module")
def engine(smollm2_path: Path) -> Iterator[Engine]:
    eng = Engine.load(smollm2_path, n_ctx=4096, n_parallel=8, n_batch=512)
    yield eng
    eng.close()


def _request(
    engine: Engine, fmt: cf.ChatFormat, grammar: object, max_tokens: int = 128
) -> GenerationRequest:
    rendered = cf.render_with_tools(
        engine.info.chat_template, USER, fmt=fmt, tools=TOOLS,
        bos_token=engine.info.bos_token, eos_token=engine.info.eos_token,
    )  # fmt: skip
    params = SamplingParams(
        temperature=0,
        max_tokens=max_tokens,
        tool_grammar=grammar,
        render_special=True,  # type: ignore[arg-type]
    )
    return GenerationRequest(prompt=rendered.prompt, params=params, parse_special=True)


def _check(fmt: cf.ChatFormat, text: str, name: str | None) -> None:
    calls = cf.OutputParser(fmt, None, tools=TOOLS).parse(text).tool_calls
    assert calls, f"{fmt.name}: no call in {text!r}"
    for call in calls:
        assert call.name in SCHEMAS and (name is None or call.name == name), text
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@pytest.mark.slow
def test_every_format_grammar_is_accepted_by_llama_cpp(engine: Engine) -> None:
    """llama.cpp parses each format's required, named and lazy grammars (a bad one is a 400
    at submit)."""
    for name in FORCED:
        fmt = cf.get_format(name)
        for mode, tool in (("required", None), ("named", "search_web"), ("auto", None)):
            grammar = cf.build_tool_grammar(fmt, TOOLS, mode=mode, name=tool)
            if grammar is None:
                continue
            params = SamplingParams(temperature=0, max_tokens=1, tool_grammar=grammar)
            handle = engine.submit(GenerationRequest(prompt="Hi", params=params))
            assert [ev for ev in handle][-1].finish_reason is not None


@pytest.mark.slow
def test_forced_calls_parse_back(engine: Engine) -> None:
    jobs = []
    for i, name in enumerate(GENERATED):
        fmt = cf.get_format(name)
        tool = "search_web" if i % 2 else None
        grammar = cf.build_tool_grammar(
            fmt, TOOLS, mode="named" if tool else "required", name=tool, parallel=False
        )
        jobs.append((fmt, tool, engine.submit(_request(engine, fmt, grammar))))
    for fmt, tool, handle in jobs:
        text = "".join(ev.text for ev in handle)
        try:
            _check(fmt, text, tool)
        except Exception as exc:
            raise AssertionError(f"{fmt.name}: {text!r}") from exc


def test_parallel_grammar_allows_several_calls(engine: Engine) -> None:
    fmt = cf.get_format("hermes")
    grammar = cf.build_tool_grammar(fmt, TOOLS, mode="required", parallel=True)
    assert grammar is not None and "tool-call (" in grammar.gbnf
    text = "".join(ev.text for ev in engine.submit(_request(engine, fmt, grammar)))
    _check(fmt, text, None)


def test_auto_grammar_is_lazy() -> None:
    grammar = cf.build_tool_grammar(cf.get_format("hermes"), TOOLS, mode="auto")
    assert grammar is not None and grammar.lazy and grammar.triggers == (r"(<tool_call>)$",)
    assert cf.build_tool_grammar(cf.get_format("hermes"), TOOLS, mode="required").lazy is False
