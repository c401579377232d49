"""The fallback for templates with no native call syntax: the answer is a JSON object
``{"name": ..., "arguments": {...}}`` (several, one per line, for parallel calls). Templates
that never render ``tools`` get a system message that describes the tools and this syntax."""

from __future__ import annotations

from ggufworker.chat_formats.base import GrammarShape, register
from ggufworker.chat_formats.pattern import EnvelopeFormat


@register
class Generic(EnvelopeFormat):
    name = "generic"
    description = 'no native format: {"name": ..., "arguments": {...}} as the whole answer'
    priority = -1000
    bare_json_start = True
    optional_open = ("```json",)

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call='{"name": "{name}", "arguments": {args}}',
            sep="{ws}",
            triggers=("{",),
            trigger_at_start=True,
        )
