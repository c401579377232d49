"""Non-streaming parse of a finished message, and the partial parse the stream diffs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ggufworker.chat_formats.base import ChatFormat, ParseResult, PartialCall, ToolCall
from ggufworker.chat_formats.reasoning import ReasoningSpec, split_reasoning


@dataclass(frozen=True)
class OutputParser:
    """How to read one request's output: the format, the reasoning markers, and switches.

    Attributes:
        fmt: the tool-call format.
        reasoning: thinking markers, or None.
        forced_open: the prompt opened the thinking block.
        parse_tools: look for calls (false when the request has no tools or ``tool_choice``
            is ``none``).
        split_thinking: separate reasoning (false for ``reasoning_format: none``).
        tools: the request's tool definitions (argument types for XML-style formats).
        lead: what the prompt already wrote of the answer (``fmt.output_lead(prompt)``).
    """

    fmt: ChatFormat
    reasoning: ReasoningSpec | None = None
    forced_open: bool = False
    parse_tools: bool = True
    split_thinking: bool = True
    tools: list[dict[str, Any]] = field(default_factory=list)
    lead: str = ""

    @property
    def active(self) -> bool:
        """False when there is nothing to split out (no tools, no thinking markers): the
        text is the content as generated."""
        return self.parse_tools or (
            self.split_thinking and (self.reasoning is not None or self.fmt.owns_reasoning)
        )

    def view(self, text: str, *, partial: bool) -> tuple[str, str, list[PartialCall], str]:
        """(reasoning, content, calls, rest) of ``text``; with ``partial`` the texts are the
        parts safe to show now (each a prefix of what the final parse gives)."""
        text = self.lead + text
        if self.fmt.owns_reasoning:
            split = self.fmt.split_calls(text, partial=partial, tools=self.tools)
            reasoning = split.reasoning if self.split_thinking else ""
            content = split.content
            if not self.split_thinking and split.reasoning:
                content = split.reasoning + content
            calls = split.calls if self.parse_tools else []
            return _tidy(reasoning, partial), _tidy(content, partial), calls, split.rest
        reasoning, body = "", text
        if self.split_thinking:
            reasoning, body = split_reasoning(
                text, self.reasoning, forced_open=self.forced_open, partial=partial
            )
        if not self.parse_tools:
            return _tidy(reasoning, partial), _tidy(body, partial), [], ""
        split = self.fmt.split_calls(body, partial=partial, tools=self.tools)
        return _tidy(reasoning, partial), _tidy(split.content, partial), split.calls, split.rest

    def parse(self, text: str) -> ParseResult:
        """The finished message: content outside calls, reasoning, complete calls."""
        reasoning, content, calls, rest = self.view(text, partial=False)
        return ParseResult(
            content=join_rest(content, rest),
            reasoning=reasoning,
            tool_calls=[ToolCall(c.name, c.arguments or "{}", c.id) for c in calls if c.name],
        )


def join_rest(content: str, rest: str) -> str:
    """Content before the calls plus any text after them."""
    rest = rest.strip()
    if not rest:
        return content
    return f"{content}\n{rest}" if content else rest


def _tidy(text: str, partial: bool) -> str:
    # Leading whitespace never shows; trailing whitespace waits until more text follows it,
    # so a partial view is always a prefix of the final one.
    text = text.lstrip()
    return text.rstrip()
