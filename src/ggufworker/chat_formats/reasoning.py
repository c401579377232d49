"""Reasoning ("thinking") blocks: which markers a template uses, whether its prompt already
opens the block, and splitting output into reasoning and the rest."""

from __future__ import annotations

from dataclasses import dataclass

from ggufworker.chat_formats.textscan import held_suffix


@dataclass(frozen=True)
class ReasoningSpec:
    """A template's thinking markers."""

    start: str
    end: str


# (marker that identifies the family in the template text, spec); first match wins
_SPECS: tuple[tuple[str, ReasoningSpec], ...] = (
    ("<seed:think>", ReasoningSpec("<seed:think>", "</seed:think>")),
    ("<|START_THINKING|>", ReasoningSpec("<|START_THINKING|>", "<|END_THINKING|>")),
    ("<think:opensource>", ReasoningSpec("<think:opensource>", "</think:opensource>")),
    ("<mm:think>", ReasoningSpec("<mm:think>", "</mm:think>")),
    ("<think>", ReasoningSpec("<think>", "</think>")),
    ("[THINK]", ReasoningSpec("[THINK]", "[/THINK]")),
)


def detect_reasoning(template: str | None) -> ReasoningSpec | None:
    """The thinking markers a template uses, or None (no reasoning support)."""
    if not template:
        return None
    for marker, spec in _SPECS:
        if marker in template:
            return spec
    return None


def opens_in_prompt(prompt: str, spec: ReasoningSpec | None) -> bool:
    """True when the rendered prompt ends inside an open thinking block (R1 distills, Qwen3
    thinking variants end the generation prompt with ``<think>\\n``)."""
    if spec is None:
        return False
    tail = prompt.rstrip()
    return tail.endswith(spec.start)


def split_reasoning(
    text: str, spec: ReasoningSpec | None, *, forced_open: bool, partial: bool
) -> tuple[str, str]:
    """Split output into (reasoning, rest).

    The block counts when the output starts with the start marker, or from the very start
    when the prompt opened it (``forced_open``). Output that ends inside the block is all
    reasoning. While ``partial``, a possible start marker or end marker prefix is held back
    (neither side includes it).
    """
    if spec is None:
        return "", text
    body = text
    if not forced_open:
        lead = text.lstrip()
        if lead.startswith(spec.start):
            body = lead[len(spec.start) :]
        elif partial and spec.start.startswith(lead):
            return "", ""
        else:
            return "", text
    end = body.find(spec.end)
    if end < 0:
        if partial:
            return body[: len(body) - held_suffix(body, (spec.end,))], ""
        return body, ""
    return body[:end], body[end + len(spec.end) :]
