"""Gemma 4: ``<|tool_call>call:f{key:<|"|>text<|"|>,n:3}<tool_call|>``: an object with bare
keys whose strings are delimited by the ``<|"|>`` token."""

from __future__ import annotations

import json
import re
from typing import Any

from ggufworker.chat_formats.base import GrammarShape, PartialCall, ToolCall, register
from ggufworker.chat_formats.pattern import CallParse, RegionFormat
from ggufworker.chat_formats.textscan import load_json

_OPEN, _CLOSE, _Q = "<|tool_call>", "<tool_call|>", '<|"|>'
_CALL = re.compile(r"<\|tool_call>call:(?P<name>[\w\-.]+)")
_KEY = re.compile(r"([{,]\s*)([A-Za-z_][\w\-]*)\s*:")
_TRAILING = re.compile(r",\s*([}\]])")


def gemma_to_json(body: str) -> Any:
    """Gemma 4's argument object as a Python value (None if it does not read)."""
    pieces = body.split(_Q)
    if len(pieces) % 2 == 0:
        return None
    out = []
    for i, piece in enumerate(pieces):
        out.append(
            json.dumps(piece) if i % 2 else _TRAILING.sub(r"\1", _KEY.sub(r'\1"\2":', piece))
        )
    return load_json("".join(out))


def _gemma_value(value: Any) -> str:
    if isinstance(value, str):
        return f"{_Q}{value}{_Q}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_gemma_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_gemma_value(v) for v in value) + "]"
    return json.dumps(value)


@register
class Gemma4(RegionFormat):
    name = "gemma4"
    description = 'Gemma 4: <|tool_call>call:f{k:<|"|>v<|"|>}<tool_call|>'
    markers = (_OPEN, _Q)
    priority = 50
    start_markers = (_OPEN,)

    def parse_call(self, text, pos, partial, schemas):  # type: ignore[no-untyped-def]
        m = _CALL.match(text, pos)
        if m is not None and partial and m.end() == len(text):
            return "wait"
        if m is None:
            tail = text[pos:]
            return (
                "wait" if partial and (_OPEN.startswith(tail) or tail.startswith(_OPEN)) else None
            )
        end = text.find(_CLOSE, m.end())
        if end < 0:
            return CallParse([PartialCall(m.group("name"))], len(text), False) if partial else None
        value = gemma_to_json(text[m.end() : end])
        if not isinstance(value, dict):
            return None
        args = json.dumps(value, ensure_ascii=False)
        return CallParse([PartialCall(m.group("name"), args, None, True)], end + len(_CLOSE))

    def render_calls(self, calls: list[ToolCall]) -> str:
        return "".join(
            f"{_OPEN}call:{c.name}{_gemma_value(json.loads(c.arguments or '{}'))}{_CLOSE}"
            for c in calls
        )

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call=_OPEN + "call:{name}{{args}}" + _CLOSE,
            params=("{key}:{value},", '"<|\\"|>" [^<]* "<|\\"|>"'),
            triggers=("<|tool_call>",),
        )
