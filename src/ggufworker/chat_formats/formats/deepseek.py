"""DeepSeek: R1 / V3 (``function<｜tool▁sep｜>name`` + a fenced JSON block) and V3.1
(``name<｜tool▁sep｜>{json}``), both inside ``<｜tool▁calls▁begin｜>...<｜tool▁calls▁end｜>``."""

from __future__ import annotations

import re

from ggufworker.chat_formats.base import GrammarShape, register
from ggufworker.chat_formats.pattern import NamedArgsFormat

_BEGIN = "<｜tool▁calls▁begin｜>"
_END = "<｜tool▁calls▁end｜>"


@register
class DeepSeekR1(NamedArgsFormat):
    name = "deepseek_r1"
    description = (
        "DeepSeek R1 / V3: <｜tool▁call▁begin｜>function<｜tool▁sep｜>name ```json {..}```"
    )
    markers = (_BEGIN, "```json")
    priority = 40
    start_markers = (_BEGIN, "<｜tool▁call▁begin｜>")
    section_open = _BEGIN
    section_close = _END
    call_open = re.compile(r"<｜tool▁call▁begin｜>\w*<｜tool▁sep｜>(?P<name>[^\n<]+)\s*```json\s*")
    opener_literal = "<｜tool▁call▁begin｜>"
    call_close = "```<｜tool▁call▁end｜>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{args}\n```<｜tool▁call▁end｜>",
            prefix=_BEGIN,
            suffix=_END,
            triggers=(_BEGIN,),
        )


@register
class DeepSeekV31(NamedArgsFormat):
    name = "deepseek_v3_1"
    description = "DeepSeek V3.1: <｜tool▁call▁begin｜>name<｜tool▁sep｜>{json}<｜tool▁call▁end｜>"
    markers = (_BEGIN,)
    priority = 35
    start_markers = (_BEGIN, "<｜tool▁call▁begin｜>")
    section_open = _BEGIN
    section_close = _END
    call_open = re.compile(r"<｜tool▁call▁begin｜>(?P<name>[^<]+?)<｜tool▁sep｜>")
    opener_literal = "<｜tool▁call▁begin｜>"
    call_close = "<｜tool▁call▁end｜>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{args}<｜tool▁call▁end｜>",
            prefix=_BEGIN,
            suffix=_END,
            triggers=(_BEGIN,),
        )
