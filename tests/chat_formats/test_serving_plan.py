"""How a chat request maps to prompt, grammar and parser (the server's plan_chat) on real
templates: reasoning_format, the server default, chat_template_kwargs, tool_choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufworker.config import ServerSettings
from ggufworker.errors import InvalidRequestError
from ggufworker.server.core.chat import plan_chat
from ggufworker.server.openai.protocol import ChatCompletionRequest
from ggufworker.server.openai.serving_chat import message_of

from .helpers import TOOLS

ASK = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def qwen3(llama_cpp_models_dir: Path) -> str:
    return (llama_cpp_models_dir / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()


def _plan(template: str, settings: ServerSettings | None = None, **body: object):  # type: ignore[no-untyped-def]
    req = ChatCompletionRequest(messages=ASK, **body)  # type: ignore[arg-type]
    default = settings.reasoning_format if settings else "auto"
    return plan_chat(
        req.to_chat_request(reasoning_format=default), template=template, bos_token="",
        eos_token="<|im_end|>", tool_call_format=settings.tool_call_format if settings else None,
    )  # fmt: skip


def test_reasoning_format_request_and_server_default(qwen3: str) -> None:
    text = "<think>\nadd them\n</think>\n\n4"
    auto = _plan(qwen3)
    assert auto.parser.parse(text).reasoning == "add them"
    assert _plan(qwen3, reasoning_format="none").parser.parse(text).content == text
    server_none = ServerSettings(reasoning_format="none")
    assert _plan(qwen3, server_none).parser.parse(text).reasoning == ""
    assert _plan(qwen3, server_none, reasoning_format="auto").parser.parse(text).content == "4"
    message = message_of(auto.parser.parse(text), reasoning_shown=True)
    assert message["reasoning_content"] == message["reasoning"] == "add them"
    assert message["content"] == "4"


def test_chat_template_kwargs_reach_the_template(qwen3: str) -> None:
    on = _plan(qwen3).prompt
    off = _plan(qwen3, chat_template_kwargs={"enable_thinking": False}).prompt
    assert on != off and off.rstrip().endswith("</think>")


def test_tool_choice_picks_grammar_and_parsing(qwen3: str) -> None:
    assert _plan(qwen3, tools=TOOLS).params.tool_grammar.lazy  # auto by default
    required = _plan(qwen3, tools=TOOLS, tool_choice="required").params.tool_grammar
    assert required is not None and not required.lazy
    named = _plan(
        qwen3, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search_web"}}
    ).params.tool_grammar
    assert named is not None and "get_weather" not in named.gbnf
    none = _plan(qwen3, tools=TOOLS, tool_choice="none")
    assert none.params.tool_grammar is None and not none.parser.parse_tools
    forced = ServerSettings(tool_call_format="generic")
    assert _plan(qwen3, forced, tools=TOOLS).parser.fmt.name == "generic"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "no"}}]},
         "tools[0].function.parameters"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ],
)  # fmt: skip
def test_bad_tools_name_the_param(qwen3: str, body: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        _plan(qwen3, **body)
    assert info.value.param == param


def test_unknown_tool_call_format_setting_is_rejected() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown tool-call format 'nope'"):
        ServerSettings(tool_call_format="nope")
