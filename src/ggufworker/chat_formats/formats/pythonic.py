"""LFM2: calls as a Python list of calls, ``<|tool_call_start|>[f(a=1, b="x")]<|tool_call_end|>``,
read with :mod:`ast` (never evaluated)."""

from __future__ import annotations

import ast
import json
from typing import Any

from ggufworker.chat_formats.base import GrammarShape, PartialCall, ToolCall, register
from ggufworker.chat_formats.pattern import CallParse, RegionFormat

_OPEN, _CLOSE = "<|tool_call_start|>", "<|tool_call_end|>"
_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    return ast.literal_eval(node)


def parse_pythonic(source: str) -> list[tuple[str, dict[str, Any]]] | None:
    """``[f(a=1), g(b="x")]`` as (name, keyword arguments) pairs, or None if it is not that."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # untrusted model text
        return None
    items = tree.body.elts if isinstance(tree.body, ast.List) else [tree.body]
    out = []
    for item in items:
        if not isinstance(item, ast.Call) or item.args:
            return None
        func = item.func
        name = func.id if isinstance(func, ast.Name) else ast.unparse(func)
        try:
            out.append((name, {kw.arg: _value(kw.value) for kw in item.keywords if kw.arg}))
        except (ValueError, SyntaxError, TypeError, RecursionError):
            return None
    return out


@register
class Lfm2(RegionFormat):
    name = "lfm2"
    description = "LFM2: <|tool_call_start|>[f(a=1)]<|tool_call_end|> (Python syntax)"
    markers = ("<|tool_list_start|>",)
    alt_markers = ((_OPEN,),)
    priority = 40
    start_markers = (_OPEN,)

    def parse_call(self, text, pos, partial, schemas):  # type: ignore[no-untyped-def]
        if not text.startswith(_OPEN, pos):
            return "wait" if partial and _OPEN.startswith(text[pos:]) else None
        end = text.find(_CLOSE, pos)
        if end < 0:
            return "wait" if partial else None
        calls = parse_pythonic(text[pos + len(_OPEN) : end])
        if not calls:
            return None
        return CallParse(
            [PartialCall(n, json.dumps(a, ensure_ascii=False), None, True) for n, a in calls],
            end + len(_CLOSE),
        )

    def render_calls(self, calls: list[ToolCall]) -> str:
        items = []
        for call in calls:
            args = json.loads(call.arguments or "{}")
            kw = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
            items.append(f"{call.name}({kw})")
        return f"{_OPEN}[{', '.join(items)}]{_CLOSE}"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="{name}({args})",
            prefix=_OPEN + "[",
            sep=", ",
            suffix="]" + _CLOSE,
            params=("{key}={value}, ", ""),
            triggers=("<|tool_call_start|>",),
        )
