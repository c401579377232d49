"""The thinking budget: a per-request cap on reasoning tokens.

The tracker watches a request's generated tokens. Once the thinking block is open (the output
began with the start marker, or the prompt opened it) and ``tokens`` have been generated
inside it, it replaces the next sampled tokens with the end marker's tokens; the model then
goes on to the answer. A request that closes the block itself is never touched.

A llama.cpp chain has accepted the tokens it sampled, not the ones written in their place, so
the scheduler re-feeds the chain the real output once the end marker is written
(:meth:`ThinkingBudget.resync`): a tool-call grammar stays in step with the text.
"""

from __future__ import annotations

from collections.abc import Callable

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.model import Model
from ggufworker.engine.types import ReasoningBudget

_BEFORE, _INSIDE, _FORCING, _DONE = range(4)


class ThinkingBudget:
    """Tracks one request's thinking block and writes its end marker when the cap is hit.

    Args:
        budget: the request's cap and the template's markers.
        end_tokens: the end marker tokenized (special tokens parsed).
        piece: token id -> its text (special tokens rendered).
    """

    __slots__ = ("_budget", "_end", "_piece", "_state", "_count", "_tail", "_forced", "output")

    def __init__(
        self, budget: ReasoningBudget, end_tokens: list[int], piece: Callable[[int], str]
    ) -> None:
        self._budget = budget
        self._end = list(end_tokens)
        self._piece = piece
        self._state = _INSIDE if budget.open_at_start else _BEFORE
        self._count = 0
        self._tail = ""  # recent text: the output's lead, then the end of the block so far
        self._forced = 0
        self.output: list[int] = []  # every generated token, as written to the sequence

    def step(self, tok: int) -> tuple[int, bool]:
        """The token to write for a sampled ``tok`` (``tok`` itself unless the cap is hit),
        and whether that token completes a forced end marker."""
        state = self._state
        if state == _BEFORE:
            self._tail += self._piece(tok)
            lead = self._tail.lstrip()
            start = self._budget.start
            if lead.startswith(start):
                self._state = _INSIDE
                self._tail = lead[len(start) :]
            elif lead and not start.startswith(lead):
                self._state = _DONE
        elif state == _INSIDE:
            text = self._tail + self._piece(tok)
            if self._budget.end in text:
                self._state = _DONE
            elif self._count >= self._budget.tokens:
                self._state = _FORCING
            else:
                self._count += 1
                # a short tail is enough to see an end marker split over tokens
                self._tail = text[-2 * len(self._budget.end) :]
        closed = False
        if self._state == _FORCING:
            tok = self._end[self._forced]
            self._forced += 1
            if self._forced == len(self._end):
                self._state = _DONE
                closed = True
        self.output.append(tok)
        return tok, closed

    def resync(self, chain: int) -> None:
        """Re-feed a llama.cpp sampler chain the output as written (after a forced end)."""
        if not chain:
            return
        llama_cpp.llama_sampler_reset(chain)
        for t in self.output:
            llama_cpp.llama_sampler_accept(chain, t)


def thinking_budget(budget: ReasoningBudget | None, model: Model) -> ThinkingBudget | None:
    """A request's tracker for ``budget`` on ``model`` (None without a budget, or when the
    end marker tokenizes to nothing)."""
    if budget is None:
        return None
    end = model.tokenize(budget.end, add_special=False, parse_special=True)
    if not end:
        return None
    return ThinkingBudget(
        budget, end, lambda t: model.piece(t, special=True).decode("utf-8", errors="replace")
    )
