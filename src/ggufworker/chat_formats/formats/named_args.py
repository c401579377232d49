"""Formats whose opener names the function and whose arguments are one JSON object:
Kimi-K2, Functionary v3.1 / v3.2, Solar Open."""

from __future__ import annotations

import re

from ggufworker.chat_formats.base import GrammarShape, register
from ggufworker.chat_formats.pattern import NamedArgsFormat


@register
class KimiK2(NamedArgsFormat):
    name = "kimi_k2"
    description = "Kimi-K2: <|tool_call_begin|>functions.name:0<|tool_call_argument_begin|>{json}"
    markers = ("<|tool_calls_section_begin|>",)
    priority = 40
    start_markers = ("<|tool_calls_section_begin|>", "<|tool_call_begin|>")
    section_open = "<|tool_calls_section_begin|>"
    section_close = "<|tool_calls_section_end|>"
    call_open = re.compile(
        r"<\|tool_call_begin\|>\s*(?P<id>(?:functions\.)?(?P<name>[\w\-.]+?):\d+)\s*"
        r"<\|tool_call_argument_begin\|>"
    )
    opener_literal = "<|tool_call_begin|>"
    call_close = "<|tool_call_end|>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<|tool_call_begin|>functions.{name}:0<|tool_call_argument_begin|>{args}"
            "<|tool_call_end|>",
            prefix="<|tool_calls_section_begin|>",
            suffix="<|tool_calls_section_end|>",
            triggers=("<|tool_calls_section_begin|>",),
        )


@register
class FunctionaryV31(NamedArgsFormat):
    name = "functionary_v3_1"
    description = "Functionary v3.1 (Llama 3.1 based): <function=name>{json}</function>"
    markers = ("<function=", "<|start_header_id|>")
    priority = 30
    start_markers = ("<function=",)
    call_open = re.compile(r"<function=(?P<name>[^>]+)>")
    opener_literal = "<function="
    call_close = "</function>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(call="<function={name}>{args}</function>", triggers=("<function=",))


@register
class FunctionaryV32(NamedArgsFormat):
    name = "functionary_v3_2"
    description = "Functionary v3.2: >>>name\\n{json} (>>>all\\n for text)"
    markers = (">>>all",)
    priority = 40
    start_markers = (">>>",)
    call_open = re.compile(r">>>(?!all\n)(?P<name>[^\n>]+)\n")
    opener_literal = ">>>"
    string_arguments = True

    def output_lead(self, prompt: str) -> str:
        return ">>>" if prompt.endswith(">>>") else ""

    def split_calls(self, text, *, partial, tools):  # type: ignore[no-untyped-def]
        if text.startswith(">>>all\n"):
            text = text[len(">>>all\n") :]
        elif partial and ">>>all\n".startswith(text):
            text = ""
        return super().split_calls(text, partial=partial, tools=tools)

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(call=">>>{name}\n{args}", triggers=(">>>",))


@register
class Solar(NamedArgsFormat):
    name = "solar"
    description = "Solar Open: <|tool_call:begin|>id<|tool_call:name|>name<|tool_call:args|>{json}"
    markers = ("<|tool_call:begin|>",)
    priority = 40
    start_markers = ("<|tool_calls|>", "<|tool_call:begin|>")
    section_open = "<|tool_calls|>"
    section_close = "<|calls|>"
    call_open = re.compile(
        r"<\|tool_call:begin\|>(?P<id>[^<]*)<\|tool_call:name\|>(?P<name>[^<]+)<\|tool_call:args\|>"
    )
    opener_literal = "<|tool_call:begin|>"
    call_close = "<|tool_call:end|>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<|tool_call:begin|>call0<|tool_call:name|>{name}<|tool_call:args|>{args}"
            "<|tool_call:end|>",
            prefix="<|tool_calls|>",
            triggers=("<|tool_calls|>",),
        )
