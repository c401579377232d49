"""Llama 3.1-3.3: a bare JSON call ``{"name": ..., "parameters": {...}}`` as the whole
message, or after ``<|python_tag|>``."""

from __future__ import annotations

from ggufworker.chat_formats.base import GrammarShape, register
from ggufworker.chat_formats.pattern import EnvelopeFormat


@register
class Llama3Json(EnvelopeFormat):
    name = "llama3_json"
    description = 'Llama 3.x: {"name": ..., "parameters": {...}} (or after <|python_tag|>)'
    markers = ("<|start_header_id|>", "ipython")
    priority = 5
    start_markers = ("<|python_tag|>",)
    optional_open = ("<|python_tag|>",)
    bare_json_start = True
    call_sep = ";"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call='{"name": "{name}", "parameters": {args}}',
            sep="; ",
            triggers=("{",),
            trigger_at_start=True,
        )
