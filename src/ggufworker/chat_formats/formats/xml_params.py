"""Formats that write each parameter as its own tagged element with a plain-text value:
Qwen3-Coder / Qwen3.5 / Nemotron 3 / Seed-OSS (``<function=f><parameter=k>v</parameter>``),
GLM-4.5+ (``<arg_key>k</arg_key><arg_value>v</arg_value>``), and the ``<invoke name=...>``
family (MiniMax-M2, DeepSeek V3.2+ DSML, MiniCPM)."""

from __future__ import annotations

import re

from ggufworker.chat_formats.base import GrammarShape, register
from ggufworker.chat_formats.pattern import TaggedParamsFormat

_TEXT = "[^<]*"


@register
class Qwen3Coder(TaggedParamsFormat):
    name = "qwen3_coder"
    description = "Qwen3-Coder / Qwen3.5 / Nemotron 3 / Seed-OSS: <function=f><parameter=k>v"
    markers = ("<function=", "<parameter=")
    priority = 50
    start_markers = ("<tool_call>", "<seed:tool_call>", "<function=")
    call_open = re.compile(r"(?:<(?:seed:)?tool_call>\s*)?<function=(?P<name>[^>\n]+)>")
    opener_literal = "<"
    param = re.compile(r"<parameter=(?P<key>[^>\n]+)>(?P<value>[\s\S]*?)</parameter>")
    call_close = "</function>"
    call_tail = "</tool_call>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<tool_call>\n<function={name}>\n{args}</function>\n</tool_call>",
            sep="\n",
            params=("<parameter={key}>\n{value}\n</parameter>\n", _TEXT),
            triggers=("<tool_call>",),
        )


@register
class SeedOss(Qwen3Coder):
    name = "seed_oss"
    description = "Seed-OSS: <seed:tool_call><function=f><parameter=k>v</parameter>..."
    markers = ("<seed:tool_call>", "<function=")
    priority = 55
    call_tail = "</seed:tool_call>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<seed:tool_call>\n<function={name}>\n{args}</function>\n</seed:tool_call>",
            sep="\n",
            params=("<parameter={key}>{value}</parameter>\n", _TEXT),
            triggers=("<seed:tool_call>",),
        )


@register
class Glm(TaggedParamsFormat):
    name = "glm"
    description = "GLM-4.5+: <tool_call>f<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>"
    markers = ("<arg_key>",)
    priority = 50
    start_markers = ("<tool_call>",)
    call_open = re.compile(r"<tool_call>(?P<name>[^\n<]+)")
    opener_literal = "<tool_call>"
    param = re.compile(
        r"<arg_key>(?P<key>[\s\S]*?)</arg_key>\s*<arg_value>(?P<value>[\s\S]*?)</arg_value>"
    )
    call_close = "</tool_call>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<tool_call>{name}\n{args}</tool_call>",
            sep="\n",
            params=("<arg_key>{key}</arg_key>\n<arg_value>{value}</arg_value>\n", _TEXT),
            triggers=("<tool_call>",),
        )


@register
class Hy3(TaggedParamsFormat):
    name = "hunyuan"
    description = "Hunyuan 3: <tool_call:opensource>f<tool_sep:opensource><arg_key:opensource>..."
    markers = (":opensource", "arg_key")
    priority = 55
    start_markers = ("<tool_calls:opensource>",)
    section_open = "<tool_calls:opensource>"
    section_close = "</tool_calls:opensource>"
    call_open = re.compile(r"<tool_call:opensource>(?P<name>[^\n<]+)<tool_sep:opensource>")
    opener_literal = "<tool_call:opensource>"
    param = re.compile(
        r"<arg_key:opensource>(?P<key>[\s\S]*?)</arg_key:opensource>\s*"
        r"<arg_value:opensource>(?P<value>[\s\S]*?)</arg_value:opensource>"
    )
    call_close = "</tool_call:opensource>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<tool_call:opensource>{name}<tool_sep:opensource>\n{args}</tool_call:opensource>",
            prefix="<tool_calls:opensource>\n",
            sep="\n",
            suffix="\n</tool_calls:opensource>",
            params=(
                "<arg_key:opensource>{key}</arg_key:opensource>\n"
                "<arg_value:opensource>{value}</arg_value:opensource>\n",
                _TEXT,
            ),
            triggers=("<tool_calls:opensource>",),
        )


def _invoke_format(
    cls_name: str,
    fmt_name: str,
    desc: str,
    section_ns: str,
    section: str,
    ns: str,
    priority: int,
    markers: tuple[str, ...] = (),
) -> type[TaggedParamsFormat]:
    """A ``<{section_ns}{section}><{ns}invoke name="f"><{ns}parameter name="k">v</...>``
    format."""
    param_tag = "parameter"
    open_section = f"<{section_ns}{section}>"
    close_section = f"</{section_ns}{section}>"
    attrs = {
        "name": fmt_name,
        "description": desc,
        "markers": markers or (open_section,),
        "priority": priority,
        "start_markers": (open_section,),
        "section_open": open_section,
        "section_close": close_section,
        "call_open": re.compile(rf'<{re.escape(ns)}invoke name="(?P<name>[^"]+)">'),
        "opener_literal": f"<{ns}invoke",
        "param": re.compile(
            rf'<{re.escape(ns)}{param_tag} name="(?P<key>[^"]+)"[^>]*>(?P<value>[\s\S]*?)'
            rf"</{re.escape(ns)}{param_tag}>"
        ),
        "call_close": f"</{ns}invoke>",
    }

    def grammar_shape(self: TaggedParamsFormat) -> GrammarShape:
        return GrammarShape(
            call=f'<{ns}invoke name="{{name}}">\n{{args}}</{ns}invoke>',
            prefix=f"{open_section}\n",
            sep="\n",
            suffix=f"\n{close_section}",
            params=(f'<{ns}{param_tag} name="{{key}}">{{value}}</{ns}{param_tag}>\n', _TEXT),
            triggers=(open_section,),
        )

    attrs["grammar_shape"] = grammar_shape
    cls: type[TaggedParamsFormat] = type(cls_name, (TaggedParamsFormat,), attrs)
    register(cls)
    return cls


MiniMaxM2 = _invoke_format(
    "MiniMaxM2", "minimax_m2", "MiniMax-M2: <minimax:tool_call><invoke name=...>",
    "minimax:", "tool_call", "", 50,
)  # fmt: skip
DeepSeekDsml = _invoke_format(
    "DeepSeekDsml", "deepseek_dsml", "DeepSeek V3.2: <｜DSML｜function_calls><｜DSML｜invoke>",
    "｜DSML｜", "function_calls", "｜DSML｜", 52, ("｜DSML｜", "function_calls"),
)  # fmt: skip
DeepSeekDsmlV4 = _invoke_format(
    "DeepSeekDsmlV4", "deepseek_v4", "DeepSeek V4: <｜DSML｜tool_calls><｜DSML｜invoke>",
    "｜DSML｜", "tool_calls", "｜DSML｜", 51, ("｜DSML｜",),
)  # fmt: skip
Atem = _invoke_format(
    "Atem", "atem", "Muse: <atem:function_calls><atem:invoke name=...>",
    "atem:", "function_calls", "atem:", 50,
)  # fmt: skip


@register
class MiniCpm(TaggedParamsFormat):
    name = "minicpm"
    description = 'MiniCPM 5: <function name="f"><param name="k">v</param></function>'
    markers = ('<param name="',)
    priority = 45
    start_markers = ('<function name="',)
    call_open = re.compile(r'<function name="(?P<name>[^"]+)">')
    opener_literal = '<function name="'
    param = re.compile(r'<param name="(?P<key>[^"]+)">(?P<value>[\s\S]*?)</param>')
    call_close = "</function>"

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call='<function name="{name}">{args}</function>',
            params=('<param name="{key}">{value}</param>', _TEXT),
            triggers=('<function name="',),
        )
