"""Reusable format bases: most families differ only in their markers, so a format module is
usually a subclass of one of these with its markers filled in.

- :class:`RegionFormat`: content, then a region of calls (optionally wrapped in a section
  marker pair); subclasses parse one call at a time with :meth:`RegionFormat.parse_call`.
- :class:`EnvelopeFormat`: each call is a JSON object ``{"name": ..., "arguments": {...}}``
  (or a JSON list of them) after an opener (Hermes ``<tool_call>``, Mistral Nemo, Llama 3).
- :class:`NamedArgsFormat`: an opener regex carries the name (and maybe an id), then the
  arguments object follows (Mistral v11, DeepSeek, Kimi-K2, Functionary, GPT-OSS-like).
- :class:`TaggedParamsFormat`: an opener names the function, each parameter is its own
  tagged element with plain-text values (Qwen3-Coder, GLM, MiniMax-M2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from ggufworker.chat_formats.base import ChatFormat, PartialCall, Split, tool_schemas
from ggufworker.chat_formats.textscan import (
    find_first,
    held_suffix,
    json_end,
    load_json,
    skip_ws,
    typed_value,
)


@dataclass
class CallParse:
    """What :meth:`RegionFormat.parse_call` found at one position."""

    calls: list[PartialCall]
    end: int
    complete: bool = True


_WAIT = "wait"


class RegionFormat(ChatFormat):
    """Content up to the first start marker, then calls until the text stops matching."""

    section_open: ClassVar[str | None] = None
    section_close: ClassVar[str | None] = None
    #: literal between consecutive calls (beyond whitespace)
    call_sep: ClassVar[str | None] = None

    def region_start(self, text: str) -> int | None:
        """Where the call region begins, or None."""
        found = find_first(text, self.start_markers)
        first = found[0] if found else None
        if self.bare_json_start:
            i = skip_ws(text, 0)
            if i < len(text) and text[i] in "{[" and (first is None or i < first):
                return i
        return first

    def parse_call(
        self, text: str, pos: int, partial: bool, schemas: dict[str, dict[str, Any]]
    ) -> CallParse | str | None:
        """Parse the call(s) at ``text[pos]``: a :class:`CallParse`, ``"wait"`` (partial text
        that may still become a call) or None (no call here)."""
        raise NotImplementedError

    def split_calls(self, text: str, *, partial: bool, tools: list[dict[str, Any]]) -> Split:
        schemas = tool_schemas(tools)
        start = self.region_start(text)
        if start is None:
            if partial:
                return Split(text[: len(text) - held_suffix(text, self.start_markers)])
            return Split(text)
        content, pos, pending = text[:start], start, False
        calls: list[PartialCall] = []
        if self.section_open:
            if text.startswith(self.section_open, pos):
                pos += len(self.section_open)
            elif partial and self.section_open.startswith(text[pos:]):
                return Split(content)
        while True:
            at = skip_ws(text, pos)
            if at >= len(text):
                pos = at
                break
            if self.section_close and text.startswith(self.section_close, at):
                pos = at + len(self.section_close)
                break
            if partial and self.section_close and self.section_close.startswith(text[at:]):
                pending = True
                break
            if calls and self.call_sep:
                if text.startswith(self.call_sep, at):
                    at = skip_ws(text, at + len(self.call_sep))
                elif partial and self.call_sep.startswith(text[at:]):
                    pending = True
                    break
            found = self.parse_call(text, at, partial, schemas)
            if found == _WAIT:
                pending = True
                break
            if not isinstance(found, CallParse):
                break
            calls.extend(found.calls)
            pos = found.end
            if not found.complete:
                pending = True
                break
        if not calls:
            if partial:
                return Split(content)
            return Split(text, failed=True)
        return Split(content, calls, "" if pending else text[pos:])


# --- JSON objects ----------------------------------------------------------------------------


def _string_end(text: str, pos: int) -> int | None:
    i = pos + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return None


def object_members(text: str, start: int) -> tuple[list[tuple[str, int, int | None]], int | None]:
    """Top-level members of the JSON object at ``text[start]`` as (key, value start, value end
    or None while unfinished), and the object's end (None while unfinished)."""
    members: list[tuple[str, int, int | None]] = []
    i = start + 1
    while True:
        i = skip_ws(text, i)
        if i >= len(text):
            return members, None
        if text[i] == "}":
            return members, i + 1
        if text[i] == ",":
            i += 1
            continue
        if text[i] != '"':
            return members, None
        kend = _string_end(text, i)
        if kend is None:
            return members, None
        key = load_json(text[i:kend])
        i = skip_ws(text, kend)
        if i >= len(text) or text[i] != ":":
            return members, None
        v = skip_ws(text, i + 1)
        if v >= len(text):
            return members, None
        if text[v] in "{[":
            vend = json_end(text, v)
        elif text[v] == '"':
            vend = _string_end(text, v)
        else:
            m = re.compile(r"[^,}\s]*").match(text, v)
            vend = m.end() if m and m.end() < len(text) else None
        members.append((str(key), v, vend))
        if vend is None:
            return members, None
        i = vend


NAME_KEYS = ("name", "tool_name", "function_name")
ARG_KEYS = ("arguments", "parameters", "args")
ID_KEYS = ("id", "tool_call_id", "call_id")


def envelope_call(text: str, start: int, *, name_as_key: bool = False) -> PartialCall | None:
    """The call written as the JSON object at ``text[start]`` (complete or not)."""
    members, end = object_members(text, start)
    complete = end is not None
    name = arguments = call_id = None
    if name_as_key:
        if not members:
            return None
        key, vs, ve = members[0]
        name = key
        arguments = text[vs:ve] if ve is not None else text[vs:].rstrip()
        if ve is not None and text[vs] != "{":
            return None
        return PartialCall(name, arguments if arguments else None, None, complete)
    for key, vs, ve in members:
        raw = text[vs:ve] if ve is not None else None
        if key in NAME_KEYS and raw is not None:
            name = load_json(raw)
        elif key in ID_KEYS and raw is not None:
            value = load_json(raw)
            call_id = str(value) if value is not None else None
        elif key in ARG_KEYS:
            if text[vs] == "{":
                arguments = raw if raw is not None else text[vs:].rstrip()
            elif raw is not None and text[vs] == '"':  # arguments given as a JSON string
                inner = load_json(raw)
                arguments = inner if isinstance(inner, str) else None
    if not isinstance(name, str):
        return PartialCall("", None, None, False) if not complete else None
    if complete and arguments is None:
        arguments = "{}"
    return PartialCall(name, arguments, call_id, complete)


class EnvelopeFormat(RegionFormat):
    """Calls as JSON envelopes after ``call_open`` (and before ``call_close``)."""

    call_open: ClassVar[str] = ""
    call_close: ClassVar[str | None] = None
    name_as_key: ClassVar[bool] = False
    #: literals skipped before a call when present (e.g. Llama's ``<|python_tag|>``)
    optional_open: ClassVar[tuple[str, ...]] = ()

    def parse_call(
        self, text: str, pos: int, partial: bool, schemas: dict[str, dict[str, Any]]
    ) -> CallParse | str | None:
        for lit in self.optional_open:
            if text.startswith(lit, pos):
                pos = skip_ws(text, pos + len(lit))
                break
            if partial and lit.startswith(text[pos:]):
                return _WAIT
        if self.call_open:
            if not text.startswith(self.call_open, pos):
                if partial and self.call_open.startswith(text[pos:]):
                    return _WAIT
                return None
            pos = skip_ws(text, pos + len(self.call_open))
        if pos >= len(text):
            return _WAIT if partial else None
        calls: list[PartialCall] = []
        if text[pos] == "[":
            i = pos + 1
            while True:
                i = skip_ws(text, i)
                if i >= len(text):
                    if not partial:
                        return None
                    return CallParse(calls, len(text), False)
                if text[i] == "]":
                    end = i + 1
                    break
                if text[i] == ",":
                    i += 1
                    continue
                if text[i] != "{":
                    return None
                call = envelope_call(text, i, name_as_key=self.name_as_key)
                if call is None:
                    return None
                if not call.complete:
                    if not partial:
                        return None
                    if call.name:
                        calls.append(call)
                    return CallParse(calls, len(text), False)
                calls.append(call)
                i = json_end(text, i) or len(text)
        elif text[pos] == "{":
            call = envelope_call(text, pos, name_as_key=self.name_as_key)
            if call is None or (not call.complete and not partial):
                return None
            if not call.complete:
                return CallParse([call] if call.name else [], len(text), False)
            calls.append(call)
            end = json_end(text, pos) or len(text)
        else:
            return None
        return self._close(text, end, partial, calls)

    def _close(self, text: str, end: int, partial: bool, calls: list[PartialCall]) -> CallParse:
        if self.call_close:
            at = skip_ws(text, end)
            if text.startswith(self.call_close, at):
                return CallParse(calls, at + len(self.call_close))
            if partial and self.call_close.startswith(text[at:]):
                return CallParse(calls, len(text), complete=False)
        return CallParse(calls, end)


def _match_opener(
    call_open: re.Pattern[str], literal: str, text: str, pos: int, partial: bool
) -> re.Match[str] | str | None:
    """The opener of a call at ``text[pos]``; ``"wait"`` while a streamed opener (or its name)
    may still be growing; None when no call starts here."""
    m = call_open.match(text, pos)
    if m is not None and partial and m.end() == len(text):
        return _WAIT  # the name may still be growing
    if m is None:
        tail = text[pos:]
        if partial and literal and (literal.startswith(tail) or tail.startswith(literal)):
            return _WAIT
        return None
    return m


# --- name in the opener, JSON arguments ------------------------------------------------------


class NamedArgsFormat(RegionFormat):
    """``call_open`` (a regex with a ``name`` group and maybe ``id``), then a JSON object of
    arguments, then ``call_close``. ``opener_literal`` is the fixed text every opener starts
    with (held back while partial)."""

    call_open: ClassVar[re.Pattern[str]]
    opener_literal: ClassVar[str] = ""
    call_close: ClassVar[str | None] = None

    def parse_call(
        self, text: str, pos: int, partial: bool, schemas: dict[str, dict[str, Any]]
    ) -> CallParse | str | None:
        m = _match_opener(self.call_open, self.opener_literal, text, pos, partial)
        if not isinstance(m, re.Match):
            return m
        name = m.group("name").strip()
        call_id = m.groupdict().get("id")
        a = skip_ws(text, m.end())
        if a >= len(text):
            return (
                CallParse([PartialCall(name, None, call_id)], len(text), False) if partial else None
            )
        if text[a] != "{":
            return None
        end = json_end(text, a)
        if end is None:
            if not partial:
                return None
            call = PartialCall(name, text[a:].rstrip(), call_id)
            return CallParse([call], len(text), False)
        if load_json(text[a:end]) is None:
            return None
        call = PartialCall(name, text[a:end], call_id, complete=True)
        if self.call_close:
            at = skip_ws(text, end)
            if text.startswith(self.call_close, at):
                return CallParse([call], at + len(self.call_close))
            if partial and self.call_close.startswith(text[at:]):
                return CallParse([call], len(text), complete=False)
        return CallParse([call], end)


# --- one tagged element per parameter ---------------------------------------------------------


def _trim_newlines(value: str) -> str:
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


class TaggedParamsFormat(RegionFormat):
    """``call_open`` regex (``name`` group), parameters matching ``param`` (``key`` and
    ``value`` groups) up to ``call_close``. Values are plain text, typed by the tool's schema."""

    call_open: ClassVar[re.Pattern[str]]
    opener_literal: ClassVar[str] = ""
    param: ClassVar[re.Pattern[str]]
    call_close: ClassVar[str] = ""
    #: literal consumed after ``call_close`` when present (Qwen3-Coder's ``</tool_call>``)
    call_tail: ClassVar[str | None] = None

    def parse_call(
        self, text: str, pos: int, partial: bool, schemas: dict[str, dict[str, Any]]
    ) -> CallParse | str | None:
        m = _match_opener(self.call_open, self.opener_literal, text, pos, partial)
        if not isinstance(m, re.Match):
            return m
        name = m.group("name").strip()
        close = text.find(self.call_close, m.end())
        if close < 0:
            if partial:
                return CallParse([PartialCall(name)], len(text), False)
            return None
        props = (schemas.get(name) or {}).get("properties") or {}
        args: dict[str, Any] = {}
        for pm in self.param.finditer(text, m.end(), close):
            key = pm.group("key").strip()
            args[key] = typed_value(_trim_newlines(pm.group("value")), props.get(key))
        arguments = json.dumps(args, ensure_ascii=False)
        end = close + len(self.call_close)
        if self.call_tail:
            at = skip_ws(text, end)
            if text.startswith(self.call_tail, at):
                end = at + len(self.call_tail)
            elif partial and self.call_tail.startswith(text[at:]):
                return CallParse([PartialCall(name, arguments, None, True)], len(text), False)
        return CallParse([PartialCall(name, arguments, None, True)], end)
