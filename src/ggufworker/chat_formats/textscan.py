"""Small scanners shared by the parsers: JSON value extents (complete or partial), marker
prefixes to hold back while streaming, and typed parameter values."""

from __future__ import annotations

import json
from typing import Any

_CLOSE = {"{": "}", "[": "]"}


def skip_ws(text: str, pos: int) -> int:
    """First index at or after ``pos`` that is not whitespace."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def json_end(text: str, pos: int) -> int | None:
    """End (exclusive) of the JSON object or array starting at ``text[pos]``, or None when the
    text stops before it closes. Strings are skipped, so braces inside them do not count."""
    if pos >= len(text) or text[pos] not in _CLOSE:
        return None
    stack: list[str] = []
    i = pos
    in_str = False
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in _CLOSE:
            stack.append(_CLOSE[c])
        elif c in "}]":
            if not stack or stack.pop() != c:
                return None
            if not stack:
                return i + 1
        i += 1
    return None


def load_json(text: str) -> Any:
    """``json.loads`` that returns None instead of raising."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def held_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a marker: text that
    must be held back because the next tokens may complete the marker."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


def find_first(text: str, markers: tuple[str, ...], start: int = 0) -> tuple[int, str] | None:
    """The earliest occurrence of any marker as (index, marker)."""
    found: tuple[int, str] | None = None
    for marker in markers:
        i = text.find(marker, start)
        if i >= 0 and (found is None or i < found[0]):
            found = (i, marker)
    return found


def typed_value(raw: str, schema: dict[str, Any] | None) -> Any:
    """A parameter written as plain text (XML-style formats) turned into its JSON value:
    strings stay text when the schema says string (or nothing parses), other types parse as
    JSON."""
    kind = (schema or {}).get("type")
    if kind == "string" or (isinstance(kind, list) and "string" in kind and len(kind) == 1):
        return raw
    value = load_json(raw)
    if value is None and raw.strip() != "null":
        return raw
    return value
