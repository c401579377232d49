"""Tool-call and reasoning formats of chat templates, shared by every API surface.

Typical use (the OpenAI and Ollama endpoints do exactly this)::

    from ggufworker import chat_formats as cf

    fmt = cf.detect_format(template)                      # or cf.get_format("hermes")
    spec = cf.detect_reasoning(template)
    rendered = cf.render_with_tools(template, messages, fmt=fmt, tools=tools,
                                    bos_token=bos, eos_token=eos, reasoning=spec)
    grammar = cf.build_tool_grammar(fmt, tools, mode="required")  # or "named" / "auto"
    parser = cf.OutputParser(fmt, spec, forced_open=rendered.forced_open, tools=tools)
    result = parser.parse(text)            # -> ParseResult(content, reasoning, tool_calls)
    stream = cf.StreamParser(parser)       # .feed(piece) -> StreamDelta; .finish()

``validate_tools`` and ``resolve_tool_choice`` check a request's ``tools`` / ``tool_choice``.
"""

from ggufworker.chat_formats import formats as _formats  # noqa: F401  (registers formats)
from ggufworker.chat_formats.base import (
    ChatFormat,
    GrammarShape,
    ParseResult,
    PartialCall,
    ToolCall,
    get_format,
    register,
    registered,
    tool_schemas,
)
from ggufworker.chat_formats.detect import detect_format, detect_format_name, has_native_tools
from ggufworker.chat_formats.grammar import build_tool_grammar
from ggufworker.chat_formats.parse import OutputParser
from ggufworker.chat_formats.reasoning import (
    ReasoningSpec,
    detect_reasoning,
    opens_in_prompt,
    split_reasoning,
)
from ggufworker.chat_formats.render import RenderedPrompt, prepare_messages, render_with_tools
from ggufworker.chat_formats.requests import (
    ToolChoice,
    capabilities,
    resolve_tool_choice,
    validate_tools,
)
from ggufworker.chat_formats.stream import StreamDelta, StreamParser, ToolCallDelta

__all__ = [
    "ChatFormat",
    "GrammarShape",
    "OutputParser",
    "ParseResult",
    "PartialCall",
    "ReasoningSpec",
    "RenderedPrompt",
    "StreamDelta",
    "StreamParser",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "build_tool_grammar",
    "capabilities",
    "detect_format",
    "detect_format_name",
    "detect_reasoning",
    "get_format",
    "has_native_tools",
    "opens_in_prompt",
    "prepare_messages",
    "register",
    "registered",
    "render_with_tools",
    "resolve_tool_choice",
    "split_reasoning",
    "tool_schemas",
    "validate_tools",
]
