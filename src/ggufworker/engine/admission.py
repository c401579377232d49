"""Admission and prefix reuse: which free slot a waiting request takes, how much of its prompt
that slot's memory keeps, and the KV cells the shared cache has left.

The rules (see :mod:`ggufworker.engine.scheduler` for the memory kinds): a KV slot keeps the
longest common prefix of its cached tokens and the prompt; a recurrent or hybrid state is kept
only when the prompt extends exactly what it consumed ("extend or restart"); with one KV pool
shared by the slots, idle slots' prefixes are dropped least recently used first when a prompt
needs their cells.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.backend_sampling import AttachedChains
from ggufworker.engine.model import Model
from ggufworker.engine.slots import Request, Slot, common_prefix
from ggufworker.engine.text import TextStream

logger = logging.getLogger(__name__)


class SlotMemory(AttachedChains):
    """Slot choice and KV accounting, mixed into the scheduler (scheduler thread only)."""

    slots: list[Slot]
    waiting: deque[Request]
    mem: Any
    model: Model
    n_ctx: int
    #: sequences take cells of one shared KV pool (False: pure recurrent, or one stream each)
    kv_cells: bool
    #: fixed-size per-sequence state (recurrent or hybrid): reuse only by extension
    state_memory: bool

    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.req is not None)

    def _used_cells(self) -> int:
        if not self.kv_cells:
            return 0
        return sum(len(s.cache) for s in self.slots)

    def _free_cells(self) -> int:
        """Cells neither holding KV nor needed by admitted-but-unfinished prompts."""
        if not self.kv_cells:
            return self.n_ctx
        reserved = sum(
            len(s.req.tokens) - s.prefill_pos
            for s in self.slots
            if s.req is not None and s.next_token < 0
        )
        return self.n_ctx - self._used_cells() - reserved

    def _drop_kv(self, s: Slot) -> None:
        # Removing a whole sequence always succeeds, recurrent state included.
        llama_cpp.llama_memory_seq_rm(self.mem, s.seq, -1, -1)
        s.cache.clear()

    def _reusable(self, s: Slot, tokens: list[int]) -> int:
        """How many of ``tokens`` the slot's memory can keep (at least one token is always
        fed again, so that the step yields the logits of the prompt's last position)."""
        n_keep = min(common_prefix(s.cache, tokens), len(tokens) - 1)
        if self.state_memory and n_keep != len(s.cache):
            # A state that consumed tokens the prompt does not continue with cannot be cut
            # back: only a cold start gives a correct state.
            return 0
        return n_keep

    def _admission_rank(self, choice: tuple[int, Slot]) -> tuple:
        """Order of free slots for a prompt: most reusable tokens, then least recently used.
        With state memory an empty slot comes before any idle state when nothing is reused,
        so that states other prompts could still extend survive longest."""
        n_keep, s = choice
        if self.state_memory:
            return (n_keep, not s.cache, -s.last_used)
        return (n_keep, -s.last_used)

    def _evict_idle(self, need: int, keep: Slot | None = None) -> None:
        """Drop idle slots' cached prefixes (least recently used first) until ``need`` cells
        are free."""
        idle = sorted(
            (s for s in self.slots if s.req is None and s.cache and s is not keep),
            key=lambda s: s.last_used,
        )
        free = self._free_cells()
        for s in idle:
            if free >= need:
                return
            free += len(s.cache)
            self._drop_kv(s)

    def clear_idle_caches(self) -> None:
        """Drop the KV of every idle slot (scheduler thread only)."""
        for s in self.slots:
            if s.req is None and s.cache:
                self._drop_kv(s)

    def _admit(self) -> None:
        while self.waiting:
            free = [s for s in self.slots if s.req is None]
            if not free:
                return
            req = self.waiting[0]
            n_keep, slot = max(
                ((self._reusable(s, req.tokens), s) for s in free), key=self._admission_rank
            )
            need = len(req.tokens) - n_keep + len(self.slots)
            free_cells = self._free_cells()
            if free_cells + len(slot.cache) - n_keep < need:
                self._evict_idle(need + len(slot.cache) - n_keep, keep=slot)
                free_cells = self._free_cells()
                if free_cells + len(slot.cache) - n_keep < need and self.busy_slots():
                    return  # wait for running requests to finish and free cells
            self.waiting.popleft()
            if n_keep > 0 and self.model.n_swa > 0:
                # A sliding-window cache that is not full-size drops positions older than the
                # window; reuse is valid only if the window before n_keep is still there
                # (the same check llama-server makes before reusing a slot).
                pos_min = llama_cpp.llama_memory_seq_pos_min(self.mem, slot.seq)
                if pos_min > max(0, n_keep - self.model.n_swa):
                    n_keep = 0
            if not llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, n_keep, -1):
                # Partial removal failed (a recurrent state that cannot be cut back); the
                # memory is unchanged, so clear the whole sequence and start over.
                logger.debug("slot %d: memory kept no prefix; restarting", slot.seq)
                llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
                n_keep = 0
            del slot.cache[n_keep:]
            slot.req = req
            slot.prefill_pos = n_keep
            slot.next_token = -1
            slot.n_gen = 0
            slot.n_cached = n_keep
            slot.stream = TextStream(req.params.stop)
            slot.first_event = True
            if req.backend:
                self._attach_sampler(slot, req)
            else:  # a chain left attached would take this sequence's logits into the graph
                self._detach_sampler(slot)
            logger.debug(
                "request %s -> slot %d (%d prompt tokens, %d cached)",
                req.id,
                slot.seq,
                len(req.tokens),
                n_keep,
            )
