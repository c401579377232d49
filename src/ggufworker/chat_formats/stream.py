"""Incremental parsing for streamed responses.

Every fed piece re-reads the whole output so far (outputs are short; the parse is linear) and
sends only what changed: reasoning and content that can no longer turn into a marker, each new
call's index, id and name once, then its arguments as they grow. Nothing is ever taken back, so
the deltas concatenate to the non-streaming parse of the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ggufworker.chat_formats.base import ParseResult, PartialCall, ToolCall
from ggufworker.chat_formats.parse import OutputParser, join_rest


@dataclass
class ToolCallDelta:
    """One piece of a streamed call (OpenAI's ``delta.tool_calls[i]``): ``id`` and ``name``
    come once, in the call's first delta; ``arguments`` is a fragment to append."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict[str, object]:
        """The delta in OpenAI's chunk shape."""
        out: dict[str, object] = {"index": self.index}
        fn: dict[str, str] = {"arguments": self.arguments}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        if self.name is not None:
            fn["name"] = self.name
        out["function"] = fn
        return out


@dataclass
class StreamDelta:
    """What one fed piece adds."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)


class StreamParser:
    """Feed output text as it is generated; get deltas that never leak marker text."""

    def __init__(self, parser: OutputParser) -> None:
        self.parser = parser
        self.text = ""
        self._content = ""
        self._reasoning = ""
        self._ids: list[str] = []
        self._names: list[str] = []
        self._args: list[str] = []

    def feed(self, piece: str) -> StreamDelta:
        """Add generated text; return the new deltas."""
        self.text += piece
        reasoning, content, calls, _ = self.parser.view(self.text, partial=True)
        return self._diff(reasoning, content, calls)

    def finish(self) -> tuple[StreamDelta, ParseResult]:
        """End of output: the last deltas and the whole message (with the ids streamed)."""
        reasoning, content, calls, rest = self.parser.view(self.text, partial=False)
        content = join_rest(content, rest)
        delta = self._diff(reasoning, content, calls, final=True)
        result = ParseResult(
            content=self._content,
            reasoning=self._reasoning,
            tool_calls=[
                ToolCall(name, args or "{}", cid)
                for name, args, cid in zip(self._names, self._args, self._ids, strict=True)
            ],
        )
        return delta, result

    def _diff(
        self, reasoning: str, content: str, calls: list[PartialCall], final: bool = False
    ) -> StreamDelta:
        delta = StreamDelta()
        if reasoning.startswith(self._reasoning) and len(reasoning) > len(self._reasoning):
            delta.reasoning = reasoning[len(self._reasoning) :]
            self._reasoning = reasoning
        # content that follows calls only shows at the end, so deltas stay in OpenAI's order
        if (not self._names or final) and content.startswith(self._content):
            if len(content) > len(self._content):
                delta.content = content[len(self._content) :]
                self._content = content
        for index, call in enumerate(calls):
            if not call.name:
                break
            if index >= len(self._names):
                call_id = call.id or self.parser.fmt.new_call_id()
                self._ids.append(call_id)
                self._names.append(call.name)
                self._args.append("")
                delta.tool_calls.append(ToolCallDelta(index, call_id, call.name))
            args = call.arguments
            if args is not None and args.startswith(self._args[index]):
                fragment = args[len(self._args[index]) :]
                if fragment:
                    self._args[index] = args
                    if delta.tool_calls and delta.tool_calls[-1].index == index:
                        delta.tool_calls[-1].arguments += fragment
                    else:
                        delta.tool_calls.append(ToolCallDelta(index, arguments=fragment))
        return delta
