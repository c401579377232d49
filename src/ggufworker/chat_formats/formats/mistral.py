"""Mistral: ``[TOOL_CALLS][{json}, ...]`` (Nemo, with call ids) and the v11 tokenizer syntax
``[TOOL_CALLS]name[CALL_ID]id[ARGS]{json}`` (Small 3.2, Devstral, Ministral 3; the id part is
optional). Mistral's templates accept only 9-alphanumeric call ids."""

from __future__ import annotations

import re

from ggufworker.chat_formats.base import GrammarShape, register
from ggufworker.chat_formats.pattern import EnvelopeFormat, NamedArgsFormat


@register
class MistralNemo(EnvelopeFormat):
    name = "mistral"
    description = "Mistral Nemo: [TOOL_CALLS][{name, arguments, id}]"
    markers = ("[TOOL_CALLS]",)
    priority = 30
    start_markers = ("[TOOL_CALLS]",)
    call_open = "[TOOL_CALLS]"
    id_pattern = r"[a-zA-Z0-9]{9}"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call='{"name": "{name}", "arguments": {args}}',
            prefix="[TOOL_CALLS][",
            sep=", ",
            suffix="]",
            triggers=("[TOOL_CALLS]",),
        )


@register
class MistralV11(NamedArgsFormat):
    name = "mistral_v11"
    description = "Mistral v11+: [TOOL_CALLS]name[CALL_ID]id[ARGS]{json}"
    markers = ("[TOOL_CALLS]", "[ARGS]")
    priority = 40
    start_markers = ("[TOOL_CALLS]",)
    call_open = re.compile(
        r"\[TOOL_CALLS\](?P<name>[^\[\]{}\s]+?)(?:\[CALL_ID\](?P<id>[^\[\]]+?))?\[ARGS\]"
    )
    opener_literal = "[TOOL_CALLS]"
    id_pattern = r"[a-zA-Z0-9]{9}"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(call="[TOOL_CALLS]{name}[ARGS]{args}", triggers=("[TOOL_CALLS]",))
