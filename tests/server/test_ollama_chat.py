"""Ollama's ``think`` and ``tools`` mapped onto the chat-format layer, on real chat templates
from llama.cpp's collection (Qwen3 thinks and calls tools in the hermes format; SmolLM2's
ChatML does neither). The end-to-end tests use SmolLM2, which has no thinking markers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ggufworker.engine.chat import render_chat
from ggufworker.engine.types import SamplingParams
from ggufworker.errors import InvalidRequestError
from ggufworker.server.ollama.chat import plan_chat, template_features

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _info(models_dir: Path, stem: str) -> SimpleNamespace:
    template = (models_dir / "templates" / f"{stem}.jinja").read_text(encoding="utf-8")
    return SimpleNamespace(chat_template=template, bos_token="", eos_token="<|im_end|>")


def test_think_splits_reasoning_and_sets_the_template_switch(llama_cpp_models_dir: Path) -> None:
    info = _info(llama_cpp_models_dir, "Qwen-Qwen3-0.6B")
    assert "thinking" in template_features(info.chat_template)
    output = "<think>\nParis is in France.\n</think>\n\nIt is sunny."

    on = plan_chat(MESSAGES, SamplingParams(), name="qwen3", info=info, think=True)
    message = on.message(on.parser.parse(output))
    assert message["thinking"].strip() == "Paris is in France."
    assert message["content"].strip() == "It is sunny."

    unset = plan_chat(MESSAGES, SamplingParams(), name="qwen3", info=info)
    kept = unset.message(unset.parser.parse(output))
    assert "thinking" not in kept and "Paris is in France." in kept["content"]

    off = plan_chat(MESSAGES, SamplingParams(), name="qwen3", info=info, think=False)
    reference = render_chat(
        info.chat_template, MESSAGES, bos_token="", eos_token="<|im_end|>", enable_thinking=False
    )
    assert off.prompt == reference != unset.prompt


def test_think_on_a_model_without_markers_is_refused(llama_cpp_models_dir: Path) -> None:
    info = _info(llama_cpp_models_dir, "HuggingFaceTB-SmolLM3-3B")
    assert "thinking" in template_features(info.chat_template)
    chatml = SimpleNamespace(chat_template=None, bos_token="", eos_token="")
    assert template_features(None) == ["tools"]
    with pytest.raises(InvalidRequestError, match="does not support thinking"):
        plan_chat(MESSAGES, SamplingParams(), name="plain", info=chatml, think=True)


def test_tool_calls_come_back_with_object_arguments(llama_cpp_models_dir: Path) -> None:
    info = _info(llama_cpp_models_dir, "Qwen-Qwen3-0.6B")
    plan = plan_chat(MESSAGES, SamplingParams(), name="qwen3", info=info, tools=TOOLS)
    assert "get_weather" in plan.prompt  # the template shows the tools
    output = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    message = plan.message(plan.parser.parse(output))
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == {"city": "Paris"}
    forced = plan_chat(
        MESSAGES, SamplingParams(), name="qwen3", info=info, tools=TOOLS, tool_choice="required"
    )
    assert forced.params.tool_grammar is not None and plan.params.tool_grammar is not None
    none = plan_chat(
        MESSAGES, SamplingParams(), name="qwen3", info=info, tools=TOOLS, tool_choice="none"
    )
    assert none.params.tool_grammar is None
    assert "tool_calls" not in none.message(none.parser.parse(output))
