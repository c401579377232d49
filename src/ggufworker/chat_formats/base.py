"""Core types of the chat-format layer: tool calls, parse results, the format base class and
the registry of formats by name.

A *format* knows three things about one family of chat templates: how tool calls look in the
model's output (parsing), how to constrain sampling to a valid call (a GBNF shape), and how the
template wants call history (argument objects or strings, call-id rules). Formats are small
classes registered with :func:`register`; detection (``detect.py``) picks one from the template.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class ToolCall:
    """One complete call: ``arguments`` is a JSON object as text (OpenAI's shape)."""

    name: str
    arguments: str
    id: str | None = None

    def to_openai(self, call_id: str) -> dict[str, Any]:
        """OpenAI's ``message.tool_calls[i]``."""
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class PartialCall:
    """A call as far as the output shows it. ``arguments`` is None until it is known; while
    ``complete`` is false it is a prefix of the final arguments text."""

    name: str
    arguments: str | None = None
    id: str | None = None
    complete: bool = False


@dataclass
class Split:
    """Output text split by a format: ``content`` before the calls, the calls, the text after
    them (``rest``), and ``held`` (text not yet attributable, while partial)."""

    content: str
    calls: list[PartialCall] = field(default_factory=list)
    rest: str = ""
    reasoning: str = ""
    failed: bool = False


@dataclass(frozen=True)
class ParseResult:
    """A finished message: text outside calls, reasoning text, and the calls."""

    content: str
    reasoning: str
    tool_calls: list[ToolCall]


@dataclass(frozen=True)
class GrammarShape:
    """How the calls of one assistant turn look, for building a GBNF grammar.

    ``call`` is the text of one call with ``{name}`` and ``{args}`` placeholders (``{args}``
    is a JSON object matching the tool's parameters, or, with ``params`` set, the
    parameters written one by one with ``params`` = ``(template, string_value_rule)``:
    a template with ``{key}`` and ``{value}``). Calls are joined with ``sep`` and wrapped in
    ``prefix`` / ``suffix``. ``triggers`` are the literal markers that switch a lazy grammar
    on in ``auto`` mode (each must begin the grammar's text); with ``trigger_at_start`` only
    at the start of the output (bare JSON formats).
    """

    call: str
    prefix: str = ""
    sep: str = ""
    suffix: str = ""
    triggers: tuple[str, ...] = ()
    params: tuple[str, str] | None = None
    trigger_at_start: bool = False


class ChatFormat:
    """Base of every tool-call format. Subclasses set the class attributes and implement
    :meth:`split_calls`; :func:`register` makes them known by ``name``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: template substrings that identify the format (all must occur); see detect.py
    markers: ClassVar[tuple[str, ...]] = ()
    #: further marker sets, any one of which also identifies the format
    alt_markers: ClassVar[tuple[tuple[str, ...], ...]] = ()
    #: detection order: higher wins when several formats match
    priority: ClassVar[int] = 0
    #: output text that starts the call region; content is held back while the output
    #: ends with a prefix of one of these
    start_markers: ClassVar[tuple[str, ...]] = ()
    #: template wants ``function.arguments`` as a JSON string instead of an object
    string_arguments: ClassVar[bool] = False
    #: regex that call ids must match for this template (ids are mapped when they don't)
    id_pattern: ClassVar[str | None] = None
    #: length of generated ids when ``id_pattern`` restricts them
    id_length: ClassVar[int] = 9
    #: the format parses reasoning itself (its output is structured, e.g. harmony channels)
    owns_reasoning: ClassVar[bool] = False
    #: the call region may start at the very beginning with no marker (Llama 3 JSON)
    bare_json_start: ClassVar[bool] = False

    def split_calls(self, text: str, *, partial: bool, tools: list[dict[str, Any]]) -> Split:
        """Split model output (reasoning already removed) into content and calls.

        Args:
            text: the output so far.
            partial: more text may follow; then content must hold back what could still
                turn into a marker, and calls may be incomplete.
            tools: the request's OpenAI tool definitions (for argument types).
        """
        raise NotImplementedError

    def output_lead(self, prompt: str) -> str:
        """Text the prompt already wrote of the model's answer (e.g. Functionary v3.2's
        generation prompt ends with ``>>>``); the parser reads the output after it."""
        return ""

    def grammar_shape(self) -> GrammarShape | None:
        """How calls look for grammar enforcement; None when the format cannot be forced."""
        return None

    def render_calls(self, calls: list[ToolCall]) -> str:
        """The calls as the model writes them, for templates that drop ``tool_calls`` from
        history (written into the assistant message's content instead)."""
        shape = self.grammar_shape()
        if shape is None:
            return ""
        parts = []
        for call in calls:
            args = call.arguments
            if shape.params is not None:
                tmpl = shape.params[0]
                obj = json.loads(args or "{}")
                args = "".join(
                    tmpl.replace("{key}", k).replace(
                        "{value}", v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                    )
                    for k, v in obj.items()
                )
            parts.append(shape.call.replace("{name}", call.name).replace("{args}", args))
        text = shape.prefix + shape.sep.join(parts) + shape.suffix
        return text.replace("{ws}", "\n")

    # --- call ids --------------------------------------------------------------------------

    def new_call_id(self) -> str:
        """A fresh id for a call the model made, already valid for this template."""
        if self.id_pattern is None:
            return "call_" + secrets.token_hex(12)
        return "".join(secrets.choice(_ALNUM) for _ in range(self.id_length))

    def map_call_id(self, call_id: str) -> str:
        """An id from a client mapped to one the template accepts; the same input always
        maps to the same output, so a call and its ``tool`` result stay paired."""
        if self.id_pattern is None or re.fullmatch(self.id_pattern, call_id):
            return call_id
        digest = hashlib.sha256(call_id.encode()).digest()
        return "".join(_ALNUM[b % len(_ALNUM)] for b in digest[: self.id_length])


_REGISTRY: dict[str, type[ChatFormat]] = {}


def register(cls: type[ChatFormat]) -> type[ChatFormat]:
    """Class decorator: make a format known under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"tool-call format {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[ChatFormat]]:
    """Every registered format class by name (formats are imported by the package)."""
    return dict(_REGISTRY)


def get_format(name: str) -> ChatFormat:
    """An instance of the format called ``name``.

    Raises:
        KeyError: no such format (the message lists the known names).
    """
    try:
        return _REGISTRY[name]()
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown tool-call format {name!r} (known: {known})") from None


def tool_schemas(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Tool name -> its parameters schema, from OpenAI tool definitions."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools or []:
        fn = tool.get("function") or {}
        if fn.get("name"):
            out[fn["name"]] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


ArgCoercer = Callable[[str, str, str], Any]
