"""Call history through real templates: ids that templates restrict are mapped consistently,
arguments arrive in the shape each template wants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ggufworker import chat_formats as cf
from ggufworker.engine.chat import TemplateError, render_chat

from .helpers import TOOLS, USER, openai_calls

MISTRAL = ["Mistral-Small-3.2-24B-Instruct-2506", "mistralai-Mistral-Nemo-Instruct-2407"]


def _history(call_id: str) -> list[dict]:
    call = openai_calls(1)[0] | {"id": call_id}
    return [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 21}'},
    ]


@pytest.mark.parametrize("stem", MISTRAL)
@pytest.mark.parametrize("call_id", ["call_1", "call_0123456789abcdefghijklmnop", "abcDEF123"])
def test_mistral_ids_are_mapped_for_call_and_result(
    llama_cpp_models_dir: Path, stem: str, call_id: str
) -> None:
    source = (llama_cpp_models_dir / "templates" / f"{stem}.jinja").read_text()
    fmt = cf.detect_format(source)
    raw = _history(call_id)
    if not re.fullmatch(r"[a-zA-Z0-9]{9}", call_id):
        with pytest.raises(TemplateError):  # the template itself refuses such ids
            render_chat(source, raw, bos_token="<s>", eos_token="</s>", tools=TOOLS)
    prompt = cf.render_with_tools(
        source, raw, fmt=fmt, tools=TOOLS, bos_token="<s>", eos_token="</s>"
    ).prompt
    mapped = fmt.map_call_id(call_id)
    assert re.fullmatch(r"[a-zA-Z0-9]{9}", mapped)
    assert mapped == fmt.map_call_id(call_id)  # stable
    assert prompt.count(mapped) == 2, prompt  # the call and its result
    assert re.fullmatch(r"[a-zA-Z0-9]{9}", fmt.new_call_id())


def test_every_rendering_template_takes_a_full_agent_turn(llama_cpp_models_dir: Path) -> None:
    """Call, tool result, then the next prompt: every template that renders calls takes the
    history (ids of other servers, arguments as JSON text) without raising."""
    ok = 0
    for path in sorted((llama_cpp_models_dir / "templates").glob("*.jinja")):
        source = path.read_text()
        fmt = cf.detect_format(source)
        try:
            prompt = cf.render_with_tools(
                source, _history("call_1"), fmt=fmt, tools=TOOLS, bos_token="<s>",
                eos_token="</s>",
            ).prompt  # fmt: skip
        except TemplateError:
            continue
        assert '{"temp": 21}' in prompt or "temp" in prompt, path.stem
        ok += 1
    assert ok >= 62, ok
