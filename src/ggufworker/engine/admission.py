"""Admission and prefix reuse: which free slot a waiting request takes, how much of its prompt
that slot's memory keeps, and the KV cells the shared cache has left.

The rules (see :mod:`ggufworker.engine.cache_tiers` for what each kind of memory can keep): a
request reuses a free slot in place when that slot's memory keeps a meaningful share of its
prompt (``PromptCacheOptions.similarity``); otherwise it takes an empty slot, else the least
recently used one, whose state goes to the RAM tier first. A state in the RAM or disk tier that
serves more of the prompt than the chosen slot keeps is restored into it. With one KV pool
shared by the slots, idle slots' prefixes are dropped (stashed first) least recently used first
when a prompt needs their cells.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from ggufworker.engine.cache_tiers import PromptCacheTiers
from ggufworker.engine.model import Model
from ggufworker.engine.slots import Request, Slot
from ggufworker.engine.text import TextStream

logger = logging.getLogger(__name__)


class SlotMemory(PromptCacheTiers):
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
        self._forget(s)

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
            self._stash(s, 0)
            self._drop_kv(s)

    def clear_idle_caches(self) -> None:
        """Drop the KV of every idle slot (scheduler thread only)."""
        for s in self.slots:
            if s.req is None and s.cache:
                self._drop_kv(s)
        self.clear_tiers()

    def _admit(self) -> None:
        while self.waiting:
            free = [s for s in self.slots if s.req is None]
            if not free:
                return
            req = self.waiting[0]
            slot, n_keep, ck, tier = self._place(free, req.tokens)
            need = len(req.tokens) - n_keep + len(self.slots)
            free_cells = self._free_cells()
            if free_cells + len(slot.cache) - n_keep < need:
                self._evict_idle(need + len(slot.cache) - n_keep, keep=slot)
                free_cells = self._free_cells()
                if free_cells + len(slot.cache) - n_keep < need and self.busy_slots():
                    return  # wait for running requests to finish and free cells
            self.waiting.popleft()
            n_keep = self._cut(slot, n_keep, ck)
            self.counters.count(tier, n_keep, len(req.tokens))
            slot.req = req
            slot.prefill_pos = n_keep
            slot.next_token = -1
            slot.n_gen = 0
            slot.n_cached = n_keep
            slot.ckpt_plan = self._checkpoint_plan(n_keep, len(req.tokens))
            slot.stream = TextStream(req.params.stop)
            slot.first_event = True
            if req.backend and self._on_host(slot, req):
                req.backend = ""  # its RowSampler draws from the copied row
            if req.backend:
                self._attach_sampler(slot, req)
            else:  # a chain left attached would take this sequence's logits into the graph
                self._detach_sampler(slot)
            logger.debug(
                "request %s -> slot %d (%d prompt tokens, %d cached from %s)",
                req.id,
                slot.seq,
                len(req.tokens),
                n_keep,
                tier,
            )
