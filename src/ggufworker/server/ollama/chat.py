"""Tools and thinking in the Ollama API, through the chat-format layer (``chat_formats``).

A chat is rendered with the model's template and tools, calls are parsed out of the output
(``message.tool_calls`` with ``arguments`` as objects, as Ollama sends them), and ``think``
maps to reasoning separation: unset leaves a thinking model's output as it is, true moves the
reasoning to ``message.thinking`` (``"low"|"medium"|"high"`` also set the template's effort),
false asks the template not to think. Ollama has no ``tool_choice``; ours (an extension, also
read from ``options.tool_choice`` because Ollama's clients send only ``options``) forces calls
with the layer's grammars.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from ggufworker import chat_formats as cf
from ggufworker.engine.types import SamplingParams
from ggufworker.errors import InvalidRequestError
from ggufworker.server.core.chat import ChatRequest
from ggufworker.server.core.chat import plan_chat as core_plan

logger = logging.getLogger(__name__)


def thinking_supported(template: str | None) -> bool:
    """The template has thinking markers the output can be split at."""
    return cf.detect_reasoning(template) is not None


def template_features(template: str | None) -> list[str]:
    """Ollama's ``tools`` and ``thinking`` capabilities of a chat template (every template
    takes tools: one without a native call syntax gets the layer's generic JSON format)."""
    return [{"reasoning": "thinking"}.get(c, c) for c in cf.capabilities(template)]


@dataclass(frozen=True)
class ChatPlan:
    """One chat prepared for one model: prompt, sampling, and how to read the output."""

    prompt: str
    params: SamplingParams
    parser: cf.OutputParser
    show_thinking: bool

    def message(self, result: cf.ParseResult) -> dict[str, Any]:
        """Ollama's assistant ``message`` for a parsed answer."""
        message: dict[str, Any] = {"role": "assistant", "content": result.content}
        if self.show_thinking and result.reasoning:
            message["thinking"] = result.reasoning
        calls = [c for c in (ollama_call(i, c) for i, c in enumerate(result.tool_calls)) if c]
        if calls:
            message["tool_calls"] = calls
        return message


def ollama_call(index: int, call: cf.ToolCall) -> dict[str, Any] | None:
    """One call in Ollama's shape (arguments an object); None when they are not JSON."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        logger.warning("dropping tool call %s: arguments are not JSON", call.name)
        return None
    if not isinstance(arguments, dict):
        return None
    out: dict[str, Any] = {"function": {"index": index, "name": call.name, "arguments": arguments}}
    if call.id:
        out["id"] = call.id
    return out


def plan_chat(
    messages: list[dict[str, Any]],
    params: SamplingParams,
    *,
    name: str,
    info: Any,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    think: bool | str | None = None,
    tool_call_format: str | None = None,
) -> ChatPlan:
    """Render ``messages`` for the model described by ``info`` and decide grammar and parsing.

    Raises:
        InvalidRequestError: bad tools / tool_choice, ``think`` on a model that cannot think,
            or the template failed.
    """
    template = info.chat_template
    spec = cf.detect_reasoning(template)
    if think and spec is None:
        raise InvalidRequestError(f"{name!r} does not support thinking", param="think")
    kwargs: dict[str, Any] = {}
    if think is not None and spec is not None:
        kwargs["enable_thinking"] = bool(think)
        if isinstance(think, str):
            kwargs["reasoning_effort"] = think
    plan = core_plan(
        ChatRequest(
            messages=messages,
            params=params,
            tools=tools,
            tool_choice=tool_choice,
            split_thinking=think is not None,  # unset: a thinking model's text stays as it is
            template_kwargs=kwargs or None,
        ),
        template=template,
        bos_token=info.bos_token,
        eos_token=info.eos_token,
        tool_call_format=tool_call_format,
    )
    return ChatPlan(plan.prompt, plan.params, plan.parser, show_thinking=bool(think))
