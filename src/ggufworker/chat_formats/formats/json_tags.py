"""Formats whose calls are JSON envelopes ``{"name": ..., "arguments": {...}}`` between
tags: Hermes 2/3, Qwen 2.5/3, Granite 3/4, Command-R7B, Command R+, MiniMax-M1, Apriel, Nemotron v2,
GigaChat 3, Apertus."""

from __future__ import annotations

from ggufworker.chat_formats.base import GrammarShape, register
from ggufworker.chat_formats.pattern import EnvelopeFormat

_ENVELOPE = '{"name": "{name}", "arguments": {args}}'


@register
class Hermes(EnvelopeFormat):
    name = "hermes"
    description = "Hermes / Qwen 2.5-3 / Granite 4: <tool_call>{json}</tool_call>"
    markers = ("<tool_call>",)
    priority = 10
    start_markers = ("<tool_call>",)
    call_open = "<tool_call>"
    call_close = "</tool_call>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<tool_call>{ws}" + _ENVELOPE + "{ws}</tool_call>",
            sep="{ws}",
            triggers=("<tool_call>",),
        )


@register
class Granite(EnvelopeFormat):
    name = "granite"
    description = "Granite 3.x: <|tool_call|>[{json}, ...]"
    markers = ("<|tool_call|>",)
    priority = 20
    start_markers = ("<|tool_call|>",)
    call_open = "<|tool_call|>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call=_ENVELOPE,
            prefix="<|tool_call|>[",
            sep=", ",
            suffix="]",
            triggers=("<|tool_call|>",),
        )


@register
class CommandR(EnvelopeFormat):
    name = "command_r"
    description = "Command-R7B / Command A: <|START_ACTION|>[{tool_name, parameters}]<|END_ACTION|>"
    markers = ("<|START_ACTION|>",)
    priority = 30
    start_markers = ("<|START_ACTION|>",)
    section_open = "<|START_ACTION|>"
    section_close = "<|END_ACTION|>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call='{"tool_call_id": "0", "tool_name": "{name}", "parameters": {args}}',
            prefix="<|START_ACTION|>[",
            sep=", ",
            suffix="]<|END_ACTION|>",
            triggers=("<|START_ACTION|>",),
        )


@register
class CommandRPlus(EnvelopeFormat):
    name = "command_r_plus"
    description = 'Command R+: Action: ```json [{"tool_name", "parameters"}]```'
    markers = ("Action:", "```json", "<|CHATBOT_TOKEN|>")
    priority = 25
    start_markers = ("Action:",)
    section_open = "Action:"
    optional_open = ("```json",)
    call_close = "```"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call='{"tool_name": "{name}", "parameters": {args}}',
            prefix="Action:\n```json\n[",
            sep=", ",
            suffix="]\n```",
            triggers=("Action:",),
        )


@register
class ToolCallsSection(EnvelopeFormat):
    name = "tool_calls_tag"
    description = "MiniMax-M1 / Apriel: <tool_calls>{json}...</tool_calls>"
    markers = ("<tool_calls>",)
    priority = 15
    start_markers = ("<tool_calls>",)
    section_open = "<tool_calls>"
    section_close = "</tool_calls>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call=_ENVELOPE,
            prefix="<tool_calls>{ws}",
            sep="{ws}",
            suffix="{ws}</tool_calls>",
            triggers=("<tool_calls>",),
        )


@register
class NemotronV2(EnvelopeFormat):
    name = "nemotron_v2"
    description = "Nemotron Nano v2: <TOOLCALL>[{json}]</TOOLCALL>"
    markers = ("<TOOLCALL>",)
    priority = 30
    start_markers = ("<TOOLCALL>",)
    call_open = "<TOOLCALL>"
    call_close = "</TOOLCALL>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call=_ENVELOPE,
            prefix="<TOOLCALL>[",
            sep=", ",
            suffix="]</TOOLCALL>",
            triggers=("<TOOLCALL>",),
        )


@register
class GigaChat(EnvelopeFormat):
    name = "gigachat"
    description = "GigaChat 3: a 'function call' turn (3.0) or <|function_call|> (3.1) with JSON"
    markers = ("<|role_sep|>",)
    priority = 25
    start_markers = ("<|function_call|>", "function call<|role_sep|>")
    optional_open = ("<|function_call|>", "function call<|role_sep|>")

    def region_start(self, text: str) -> int | None:
        found = super().region_start(text)
        if found is None:
            return None
        # 3.0 closes the assistant turn first: <|message_sep|> ... function call<|role_sep|>
        return found

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(call="<|function_call|>" + _ENVELOPE, triggers=("<|function_call|>",))


@register
class Apertus(EnvelopeFormat):
    name = "apertus"
    description = "Apertus: <|tools_prefix|>[{name: arguments}]<|tools_suffix|>"
    markers = ("<|tools_prefix|>",)
    priority = 30
    start_markers = ("<|tools_prefix|>",)
    call_open = "<|tools_prefix|>"
    call_close = "<|tools_suffix|>"
    name_as_key = True

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call='{"{name}": {args}}',
            prefix="<|tools_prefix|>[",
            sep=", ",
            suffix="]<|tools_suffix|>",
            triggers=("<|tools_prefix|>",),
        )
