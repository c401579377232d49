"""Grammars that force tool calls: ``required`` / a named tool (the output is a call) and
``auto`` (a lazy grammar that switches on at the format's trigger)."""

from __future__ import annotations

import json
import re
from typing import Any

from ggufworker.chat_formats.base import ChatFormat, GrammarShape, tool_schemas
from ggufworker.chat_formats.reasoning import ReasoningSpec
from ggufworker.engine.types import ToolGrammar

_PLACEHOLDER = re.compile(r"\{(args|value|ws)\}")
_ANY_PLACEHOLDER = re.compile(r"\{(name|args|key|value|ws)\}")
_WS = "[ \\t\\n]*"
# Between calls and after a thinking block: a few whitespace characters at most. Unbounded,
# a small model that has finished a forced call can emit newlines until max_tokens instead
# of ending its turn (the grammar never forces the end-of-turn token).
_GAP = "[ \\t\\n]{0,4}"


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def _seq(template: str, values: dict[str, str]) -> str:
    """A GBNF sequence for a shape template: literals between placeholders, placeholders
    replaced by the rule expressions in ``values``."""
    parts: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        if m.start() > pos:
            parts.append(gbnf_literal(template[pos : m.start()]))
        parts.append(_WS if m.group(1) == "ws" else values[m.group(1)])
        pos = m.end()
    if pos < len(template):
        parts.append(gbnf_literal(template[pos:]))
    return " ".join(parts) if parts else '""'


def _char_class(ch: str) -> str:
    escaped = ch.replace("\\", "\\\\").replace("]", "\\]").replace("^", "\\^")
    escaped = escaped.replace("-", "\\-").replace("\n", "\\n")
    return escaped


def _text_without(marker: str) -> str:
    """A GBNF expression for text in which ``marker`` cannot start: its first character only
    when the second does not follow (``</think>``, ``<|END_THINKING|>``, ``[/THINK]``), so
    the block's end is unambiguous and a grammar cannot stay in the thinking text past it."""
    first = marker[0]
    if len(marker) == 1:
        return f"[^{_char_class(first)}]*"
    second = marker[1]
    return f"([^{_char_class(first)}] | {gbnf_literal(first)} [^{_char_class(second)}])*"


def _rule_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index}"


def build_tool_grammar(
    fmt: ChatFormat,
    tools: list[dict[str, Any]],
    *,
    mode: str,
    name: str | None = None,
    parallel: bool = True,
    reasoning: ReasoningSpec | None = None,
    forced_open: bool = False,
    lead: str = "",
) -> ToolGrammar | None:
    """The grammar that enforces ``tool_choice``.

    Args:
        fmt: the tool-call format.
        tools: OpenAI tool definitions.
        mode: ``"required"`` (the output is one or more calls), ``"named"`` (a call of
            ``name``) or ``"auto"`` (free text; a lazy grammar makes a started call valid).
        name: the tool for ``"named"``.
        parallel: allow several calls in one turn.
        reasoning: thinking markers; a thinking block may precede forced calls.
        forced_open: the prompt opened the thinking block, so the output starts inside it.
        lead: text the prompt already wrote of the answer (``ChatFormat.output_lead``, e.g.
            Functionary v3.2's ``>>>``): a forced output does not write it again.

    Returns:
        The grammar, or None when the format cannot be forced (``auto`` without triggers).
    """
    shape = fmt.grammar_shape()
    if shape is None:
        return None
    if mode == "auto" and not shape.triggers:
        return None
    schemas = tool_schemas(tools)
    names = [name] if mode == "named" and name else list(schemas)
    rules: list[str] = []
    schema_rules: list[tuple[str, str]] = []
    alts: list[str] = []
    firsts: list[str] = []
    prefix = shape.prefix
    # a lead the prompt wrote is the start of the prefix, or of the first call
    lead = lead if mode != "auto" and reasoning is None else ""
    lead_in_call = bool(lead) and not prefix.startswith(lead)
    if lead and not lead_in_call:
        prefix = prefix[len(lead) :]
    for i, tool_name in enumerate(names):
        schema = schemas[tool_name]
        if shape.params is not None:
            args = _params_rule(shape, schema, i, rules, schema_rules)
        else:
            args = _rule_name("tool-args", i)
            # arguments are always an object, even when the schema leaves the type open
            obj = schema if schema.get("type") else {"type": "object", **schema}
            schema_rules.append((args, json.dumps(obj)))
        call = _rule_name("tool-call", i)
        text = shape.call.replace("{name}", tool_name)
        rules.append(f"{call} ::= {_seq(text, {'args': args})}")
        alts.append(call)
        if lead_in_call and text.startswith(lead):
            first = _rule_name("first-call", i)
            rules.append(f"{first} ::= {_seq(text[len(lead) :], {'args': args})}")
            firsts.append(first)
    rules.append("tool-call ::= " + " | ".join(alts))
    head = "tool-call"
    if firsts and len(firsts) == len(alts):
        rules.append("first-call ::= " + " | ".join(firsts))
        head = "first-call"
    sep = f"{_GAP} {_seq(shape.sep, {})} {_GAP}" if shape.sep else _GAP
    calls = f"{head} ({sep} tool-call)*" if parallel else head
    body = f"{_seq(prefix, {})} {calls} {_seq(shape.suffix, {})}"
    if mode != "auto" and reasoning is not None:
        rules.append(f"think-text ::= {_text_without(reasoning.end)}")
        block = f"think-text {gbnf_literal(reasoning.end)} {_GAP}"
        if forced_open:
            body = f"{block} {body}"
        else:
            body = f"({gbnf_literal(reasoning.start)} {block})? {body}"
    rules.insert(0, f"root ::= {body}")
    gbnf = "\n".join(rules)
    return ToolGrammar(
        gbnf=gbnf,
        schemas=tuple(schema_rules),
        lazy=mode == "auto",
        triggers=trigger_patterns(shape) if mode == "auto" else (),
    )


def trigger_patterns(shape: GrammarShape) -> tuple[str, ...]:
    """llama.cpp trigger regexes for a lazy grammar.

    A pattern fires only when the output so far *ends* with a prefix of the grammar's fixed
    leading text that contains the marker. llama.cpp feeds the grammar the text from the
    match on, so a trigger that fired in the middle of a token would hand the grammar the
    rest of that token unchecked, and a grammar that rejects it aborts the process
    ("Unexpected empty grammar stack"). Firing only at a valid prefix makes that impossible;
    a marker that never ends on a token boundary leaves the output unconstrained instead.
    """
    lead = _leading_literal(shape.prefix + shape.call)
    patterns = []
    for marker in shape.triggers:
        if not lead.startswith(marker):
            raise ValueError(f"trigger {marker!r} does not begin the grammar text {lead!r}")
        alts = "|".join(_ecma_escape(lead[:k]) for k in range(len(lead), len(marker) - 1, -1))
        head = "^[ \t\n]*" if shape.trigger_at_start else ""
        patterns.append(f"{head}({alts})$")
    return tuple(patterns)


def _ecma_escape(text: str) -> str:
    """``text`` as a literal in an ECMAScript regex (std::regex): only metacharacters are
    escaped (Python's re.escape also escapes spaces, which std::regex may reject)."""
    out = []
    for ch in text:
        if ch in "\\^$.|?*+()[]{}/":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    return "".join(out)


def _leading_literal(template: str) -> str:
    m = _ANY_PLACEHOLDER.search(template)
    return template[: m.start()] if m else template


def _params_rule(
    shape: GrammarShape,
    schema: dict[str, Any],
    index: int,
    rules: list[str],
    schema_rules: list[tuple[str, str]],
) -> str:
    """Rule for parameters written one element each (XML-style formats)."""
    assert shape.params is not None
    template, text_rule = shape.params
    props: dict[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    parts: list[str] = []
    for j, (key, prop) in enumerate(props.items()):
        if prop.get("type") == "string" and text_rule:
            value = f"tool-text-{index}-{j}"
            limit = prop.get("maxLength")
            if isinstance(limit, int) and limit >= 0:
                text_rule_j = text_rule.replace("[^<]*", f"[^<]{{0,{limit}}}")
            else:
                text_rule_j = text_rule
            rules.append(f"{value} ::= {text_rule_j}")
        else:
            value = f"tool-param-{index}-{j}"
            schema_rules.append((value, json.dumps(prop)))
        item = _seq(template.replace("{key}", key), {"value": value})
        parts.append(f"({item})" if key in required else f"({item})?")
    rule = f"tool-params-{index}"
    rules.append(f"{rule} ::= " + (" ".join(parts) if parts else '""'))
    return rule
