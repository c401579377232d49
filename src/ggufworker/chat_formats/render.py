"""Rendering a conversation with tools through the model's template.

Templates disagree on how call history looks: most want ``function.arguments`` as an object,
a few as a JSON string; some accept only ids of a fixed shape (Mistral: 9 alphanumerics) and
raise otherwise; some ignore ``tool_calls`` or the ``tool`` role altogether. This module turns
OpenAI messages into what the detected format's template needs, maps ids consistently (a call
and its result get the same mapped id), and describes the tools in a system message when the
template itself never shows them to the model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ggufworker.chat_formats.base import ChatFormat, ToolCall
from ggufworker.chat_formats.reasoning import ReasoningSpec, opens_in_prompt
from ggufworker.chat_formats.textscan import load_json

# template variables a request's chat_template_kwargs may not replace
_RESERVED = frozenset(
    {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "template"}
)


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt plus what the output parser needs to know about it."""

    prompt: str
    forced_open: bool


def template_shows_tools(template: str | None) -> bool:
    """The template renders the ``tools`` variable (otherwise we describe them ourselves)."""
    return bool(template) and "tools" in (template or "")


def prepare_messages(
    messages: list[dict[str, Any]],
    fmt: ChatFormat,
    template: str | None,
    *,
    string_arguments: bool | None = None,
) -> list[dict[str, Any]]:
    """OpenAI messages made ready for ``template`` (a new list; the input is not changed).

    ``string_arguments`` overrides the format's choice of arguments as JSON text (True) or
    objects (False)."""
    as_text = fmt.string_arguments if string_arguments is None else string_arguments
    src = template or ""
    inline_calls = "tool_calls" not in src
    tool_role = "tool" in src
    names: dict[str, str] = {}
    fixed: list[dict[str, Any]]
    out: list[dict[str, Any]] = []
    for message in messages:
        msg = copy.deepcopy(message)
        if msg.get("content") is None:
            msg["content"] = ""  # templates test and concatenate content as text
        calls = msg.get("tool_calls")
        if msg.get("role") == "assistant" and calls:
            fixed = []
            for call in calls:
                fn = dict(call.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    parsed = load_json(args)
                    args = parsed if isinstance(parsed, dict) else {}
                fn["arguments"] = json.dumps(args, ensure_ascii=False) if as_text else args
                cid = fmt.map_call_id(str(call.get("id") or fmt.new_call_id()))
                names[cid] = fn.get("name", "")
                fixed.append({"id": cid, "type": "function", "function": fn})
            if inline_calls:
                text = fmt.render_calls(
                    [
                        ToolCall(
                            c["function"].get("name", ""),
                            c["function"]["arguments"]
                            if isinstance(c["function"]["arguments"], str)
                            else json.dumps(c["function"]["arguments"], ensure_ascii=False),
                            c["id"],
                        )
                        for c in fixed
                    ]
                )
                msg["content"] = f"{msg.get('content') or ''}{text}"
                msg.pop("tool_calls", None)
            else:
                msg["tool_calls"] = fixed
        elif msg.get("role") == "tool":
            result_id = msg.get("tool_call_id")
            if result_id is not None:
                msg["tool_call_id"] = fmt.map_call_id(str(result_id))
                msg.setdefault("name", names.get(msg["tool_call_id"], ""))
            if not tool_role:
                msg = {"role": "user", "content": f"Tool result: {msg.get('content') or ''}"}
        out.append(msg)
    return out


def tools_instructions(fmt: ChatFormat, tools: list[dict[str, Any]]) -> str:
    """A system-prompt paragraph describing the tools and the call syntax (for templates
    that do not render ``tools``)."""
    example = fmt.render_calls([ToolCall("tool_name", '{"argument": "value"}')])
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return f"You can call these tools:\n{listing}\nTo call a tool, answer with exactly: {example}"


def with_tool_instructions(
    messages: list[dict[str, Any]],
    fmt: ChatFormat,
    tools: list[dict[str, Any]],
    *,
    system: bool = True,
) -> list[dict[str, Any]]:
    """``messages`` with the tool description merged into (or put before) the first system
    message; with ``system`` false (templates that refuse a system role), into the first
    user message."""
    note = tools_instructions(fmt, tools)
    out = list(messages)
    if not system:
        for i, msg in enumerate(out):
            if msg.get("role") == "user":
                out[i] = {**msg, "content": f"{note}\n\n{msg.get('content') or ''}"}
                return out
        return out
    if out and out[0].get("role") == "system":
        first = dict(out[0])
        first["content"] = f"{first.get('content') or ''}\n\n{note}".strip()
        out[0] = first
    else:
        out.insert(0, {"role": "system", "content": note})
    return out


def render_with_tools(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    fmt: ChatFormat,
    tools: list[dict[str, Any]] | None,
    bos_token: str | None,
    eos_token: str | None,
    reasoning: ReasoningSpec | None = None,
    template_kwargs: dict[str, Any] | None = None,
    add_generation_prompt: bool = True,
    render: Callable[..., str] | None = None,
) -> RenderedPrompt:
    """Render a conversation (with tools and call history) through the model's template.

    Args:
        template: the GGUF's Jinja2 chat template (None: ChatML).
        messages: OpenAI-style messages; assistant ``tool_calls`` may carry arguments as
            JSON text or objects and ids of any shape.
        fmt: the model's tool-call format (see :func:`ggufworker.chat_formats.detect_format`).
        tools: OpenAI tool definitions, or None.
        bos_token, eos_token: special token texts for the template.
        reasoning: the template's thinking markers (to notice a prompt that opens the block).
        template_kwargs: extra template variables (``chat_template_kwargs``, e.g.
            ``{"enable_thinking": False}``).
        add_generation_prompt: end with an assistant header.
        render: the engine's ``render_chat(messages, tools=..., add_generation_prompt=...,
            **template_kwargs)`` to render with (default: the template text directly).

    Returns:
        The prompt and whether it leaves a thinking block open.

    Raises:
        TemplateError: the template raised or failed.
    """
    from ggufworker.engine.chat import TemplateError, render_chat

    extra = {k: v for k, v in (template_kwargs or {}).items() if k not in _RESERVED}

    def attempt(string_arguments: bool | None, system: bool) -> str:
        msgs = prepare_messages(messages, fmt, template, string_arguments=string_arguments)
        if tools and not template_shows_tools(template):
            msgs = with_tool_instructions(msgs, fmt, tools, system=system)
        if render is not None:
            return render(
                msgs, tools=tools or None, add_generation_prompt=add_generation_prompt, **extra
            )
        return render_chat(
            template,
            msgs,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=tools or None,
            add_generation_prompt=add_generation_prompt,
            **extra,
        )

    # Templates differ in what they accept without saying so in their source: arguments as
    # objects or as JSON text, a system message or none. Try the format's choice first, then
    # the others; the first error is the one reported.
    variants: list[tuple[bool | None, bool]] = [(None, True)]
    if any(m.get("tool_calls") for m in messages):
        variants.append((not fmt.string_arguments, True))
    if tools and not template_shows_tools(template):
        variants += [(args, False) for args, _ in list(variants)]
    first: TemplateError | None = None
    for string_arguments, system in variants:
        try:
            prompt = attempt(string_arguments, system)
            break
        except TemplateError as exc:
            first = first or exc
    else:
        assert first is not None
        raise first
    return RenderedPrompt(prompt, add_generation_prompt and opens_in_prompt(prompt, reasoning))
