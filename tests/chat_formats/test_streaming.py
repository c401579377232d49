"""The streaming parser against the non-streaming one: every split of real rendered turns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ggufworker import chat_formats as cf
from ggufworker.engine.chat import TemplateError

from .helpers import TOOLS, rendered_turn
from .test_templates import ONE_CALL_PER_TURN


def stream_all(parser: cf.OutputParser, pieces: list[str]) -> tuple[cf.ParseResult, dict]:
    """Feed pieces; return the final result and what the deltas concatenate to."""
    sp = cf.StreamParser(parser)
    content, reasoning = [], []
    calls: dict[int, dict] = {}
    deltas = [sp.feed(p) for p in pieces]
    last, result = sp.finish()
    for d in [*deltas, last]:
        content.append(d.content)
        reasoning.append(d.reasoning)
        for t in d.tool_calls:
            slot = calls.setdefault(t.index, {"name": None, "id": None, "arguments": ""})
            if t.name is not None:
                assert slot["name"] is None, "a call's name must come once"
                slot["name"], slot["id"] = t.name, t.id
            slot["arguments"] += t.arguments
    early = "".join(d.content for d in deltas)  # streamed while generating, before the end
    return result, {
        "content": "".join(content),
        "early": early,
        "reasoning": "".join(reasoning),
        "calls": calls,
    }


def check_splits(parser: cf.OutputParser, text: str) -> None:
    """Every two-piece split and the one-character-at-a-time feed give the non-streamed parse."""
    want = parser.parse(text)
    feeds = [[text[:k], text[k:]] for k in range(len(text) + 1)] + [list(text)]
    for pieces in feeds:
        result, got = stream_all(parser, pieces)
        assert got["content"] == want.content, pieces
        assert got["reasoning"] == want.reasoning, pieces
        calls = [got["calls"][i] for i in sorted(got["calls"])]
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
            (c.name, json.loads(c.arguments)) for c in want.tool_calls
        ], pieces
        assert [c.name for c in result.tool_calls] == [c.name for c in want.tool_calls]
        for marker in parser.fmt.start_markers:
            if want.tool_calls:  # text after the calls only comes with the last delta
                assert marker not in got["early"], (marker, pieces)


@pytest.fixture(scope="module")
def templates(llama_cpp_models_dir: Path) -> dict[str, str]:
    return {
        p.stem: p.read_text() for p in sorted((llama_cpp_models_dir / "templates").glob("*.jinja"))
    }


def test_every_split_of_every_rendered_turn(templates: dict[str, str]) -> None:
    checked = 0
    for stem, source in templates.items():
        fmt = cf.detect_format(source)
        try:
            prompt, text = rendered_turn(source, fmt, 1 if stem in ONE_CALL_PER_TURN else 2)
        except TemplateError:
            try:
                prompt, text = rendered_turn(source, fmt, 1)
            except TemplateError:
                continue
        parser = cf.OutputParser(
            fmt, None, tools=TOOLS, split_thinking=False, lead=fmt.output_lead(prompt)
        )
        if not parser.parse(text).tool_calls:
            continue
        check_splits(parser, "I will look that up.\n" + text if fmt.start_markers else text)
        checked += 1
    assert checked >= 55, checked


@pytest.mark.parametrize("name", ["hermes", "mistral_v11", "qwen3_coder", "kimi_k2", "generic"])
def test_grammar_shape_text_round_trips(name: str) -> None:
    """What a forced grammar makes the model write (render_calls) parses back, in pieces too."""
    fmt = cf.get_format(name)
    calls = [cf.ToolCall("get_weather", '{"city": "Paris", "days": 3}')]
    text = fmt.render_calls(calls)
    parser = cf.OutputParser(fmt, None, tools=TOOLS)
    got = parser.parse(text).tool_calls
    assert [(c.name, json.loads(c.arguments)) for c in got] == [
        ("get_weather", {"city": "Paris", "days": 3})
    ]
    check_splits(parser, text)


def test_text_that_only_looks_like_a_marker_is_content() -> None:
    parser = cf.OutputParser(cf.get_format("hermes"), None, tools=TOOLS)
    text = "Use <tool to build things; <tool_c is not a tag."
    assert parser.parse(text).content == text
    check_splits(parser, text)
