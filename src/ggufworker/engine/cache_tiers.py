"""The prompt cache's tiers as the scheduler uses them: what a slot's memory can keep of a
prompt, moving states between slots and the RAM and disk tiers, and taking checkpoints
(the objects themselves are in :mod:`ggufworker.engine.prompt_cache` and
:mod:`ggufworker.engine.state_files`).

What a memory can keep of a prompt that shares its first ``n`` tokens:

- full-attention KV (no sliding window, no recurrent state): any ``n``, cut back with
  ``seq_rm``;
- a sliding-window cache: ``n`` when the window before ``n`` is still there (a slot's own
  cache with ``swa_full``; llama-server makes the same check), else the latest checkpoint at or
  before ``n``;
- a recurrent or hybrid state: all of it when the prompt extends it exactly, else the latest
  checkpoint at or before ``n``;
- a state restored from the RAM or disk tier holds only what the window still sees, so for
  sliding-window and state memory it counts as the exact-extension-or-checkpoint case.

At least one prompt token is always fed again, so that the step yields the prompt's last logits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.backend_sampling import AttachedChains
from ggufworker.engine.model import Model
from ggufworker.engine.prompt_cache import (
    STATE_FULL,
    STATE_PARTIAL,
    CacheCounters,
    Checkpoint,
    Entry,
    PromptCacheOptions,
    PromptCacheStats,
    RamTier,
    latest_checkpoint,
    read_state,
    write_state,
)
from ggufworker.engine.slots import Slot, common_prefix
from ggufworker.engine.state_files import DiskTier
from ggufworker.errors import InvalidRequestError

logger = logging.getLogger(__name__)

#: a slot's state shorter than this is not worth a copy in the RAM or disk tier
MIN_STASH_TOKENS = 32
#: a slot keeping at least this share of its tokens for the next prompt is not stashed first
KEEP_SHARE = 0.5
#: checkpoints are also taken this many tokens before a prompt's end (chat templates render a
#: turn's closing tokens differently once it is history; llama-server uses the same offset)
TAIL = 4


class PromptCacheTiers(AttachedChains):
    """Prompt cache tiers, mixed into the scheduler (scheduler thread only, unless noted)."""

    ctx: Any
    mem: Any
    model: Model
    slots: list[Slot]
    kv_cells: bool
    state_memory: bool

    def _init_prompt_cache(
        self, opts: PromptCacheOptions, *, model_id: str | None, layout: str
    ) -> None:
        self.cache_opts = opts
        # memory that cannot be cut back anywhere takes checkpoints
        self.needs_checkpoints = self.model.n_swa > 0 or self.state_memory
        self.cuttable = not self.needs_checkpoints
        self.ram: RamTier | None = RamTier(opts.ram_mib << 20) if opts.ram_mib > 0 else None
        self.disk: DiskTier | None = None
        if opts.disk_dir is not None and opts.disk_mib > 0 and model_id is not None:
            try:
                self.disk = DiskTier(
                    opts.disk_dir, opts.disk_mib << 20, model=model_id, layout=layout
                )
            except OSError as exc:
                logger.warning("prompt cache: disk tier off (%s): %s", opts.disk_dir, exc)
        self.counters = CacheCounters()

    # --- what a memory can keep ------------------------------------------------------------

    def _usable(
        self, cached: list[int], checkpoints: Sequence[Checkpoint], tokens: list[int]
    ) -> int:
        """Tokens of ``tokens`` a state restored from a tier serves (see the module doc)."""
        n = min(common_prefix(cached, tokens), len(tokens) - 1)
        if n <= 0:
            return 0
        if n == len(cached) or self.cuttable:
            return n
        ck = latest_checkpoint(checkpoints, n)
        return ck.n_tokens if ck is not None else 0

    def _in_place(self, s: Slot, tokens: list[int]) -> tuple[int, Checkpoint | None]:
        """Tokens of ``tokens`` the slot's memory keeps, and the checkpoint to go back to
        first (None: cut the memory back directly)."""
        n = min(common_prefix(s.cache, tokens), len(tokens) - 1)
        if n <= 0:
            return 0, None
        if n == len(s.cache) or self.cuttable:
            return n, None
        if not self.state_memory:
            # a sliding window: the cut is valid while the window before n is still cached
            pos_min = int(llama_cpp.llama_memory_seq_pos_min(self.mem, s.seq))
            if 0 <= pos_min <= max(0, n - self.model.n_swa):
                return n, None
        ck = latest_checkpoint(s.checkpoints, n)
        return (ck.n_tokens, ck) if ck is not None else (0, None)

    # --- slot choice -----------------------------------------------------------------------

    def _place(
        self, free: list[Slot], tokens: list[int]
    ) -> tuple[Slot, int, Checkpoint | None, str]:
        """Choose a free slot for ``tokens`` and bring the best cached state into it.

        A slot is reused in place when its memory keeps a meaningful share of the prompt
        (``similarity``); otherwise the prompt goes to an empty slot, else the least recently
        used one, so that one conversation does not overwrite another's long history to save
        a shared system prompt. A RAM or disk state serving more tokens than the chosen slot
        keeps is then restored into it (after the slot's own state was stashed).

        Returns:
            (slot, tokens kept, checkpoint to resume from, tier that served them)
        """
        plans = [(self._in_place(s, tokens), s) for s in free]
        (n, ck), slot = max(plans, key=lambda p: (p[0][0], -p[1].last_used))
        if n == 0 or n < self.cache_opts.similarity * len(tokens):
            slot = min(free, key=lambda s: (bool(s.cache), s.last_used))
            n, ck = next(plan for plan, s in plans if s is slot)
        tier = "checkpoint" if ck is not None else "slot"
        entry, n_ram = self.ram.best(tokens, self._usable) if self.ram else (None, 0)
        path, n_disk = self.disk.best(tokens, self._usable) if self.disk else (None, 0)
        if max(n_ram, n_disk) <= n:
            return slot, n, ck, tier
        if n_disk > n_ram:
            assert self.disk is not None and path is not None
            entry, tier = self.disk.load(path), "disk"
        else:
            tier = "ram"
        if entry is None or not self._restore(slot, entry):
            n, ck = self._in_place(slot, tokens)
            return slot, n, ck, "checkpoint" if ck is not None else "slot"
        if tier == "ram" and self.ram is not None:
            self.ram.touch(entry)
        n, ck = self._in_place(slot, tokens)
        return slot, n, ck, tier

    def _restore(self, s: Slot, entry: Entry) -> bool:
        """Replace the slot's memory by ``entry``'s state (the slot's own is stashed first)."""
        self._stash(s, 0)
        if self.kv_cells:
            # one shared pool: the restored cells must fit beside the other slots' cells
            short = len(entry.tokens) - len(s.cache) - self._free_cells()  # type: ignore[attr-defined]
            if short > 0:
                self._evict_idle(len(entry.tokens) - len(s.cache), keep=s)  # type: ignore[attr-defined]
                if len(entry.tokens) - len(s.cache) > self._free_cells():  # type: ignore[attr-defined]
                    return False
        if not write_state(self.ctx, s.seq, entry.data, STATE_FULL):
            logger.warning(
                "prompt cache: llama.cpp could not restore a state of %d tokens into slot %d; "
                "the prompt is prefilled instead", len(entry.tokens), s.seq,
            )  # fmt: skip
            self._forget(s)
            return False
        s.cache[:] = entry.tokens
        s.checkpoints = list(entry.checkpoints)
        return True

    def _cut(self, s: Slot, n: int, ck: Checkpoint | None) -> int:
        """Cut the slot's memory back to its first ``n`` tokens (from checkpoint ``ck`` when
        given); returns the tokens kept (0 when the memory had to start over)."""
        if n < len(s.cache):
            self._stash(s, n)
        if ck is not None and not write_state(self.ctx, s.seq, ck.data, STATE_PARTIAL):
            logger.warning("slot %d: checkpoint at %d tokens not restored; restarting", s.seq, n)
            self._forget(s)
            return 0
        if not llama_cpp.llama_memory_seq_rm(self.mem, s.seq, n, -1):
            # a partial removal failed (state memory); the memory is unchanged: start over
            logger.debug("slot %d: memory kept no prefix; restarting", s.seq)
            self._forget(s)
            return 0
        del s.cache[n:]
        s.checkpoints = [c for c in s.checkpoints if c.n_tokens <= n]
        return n

    def _forget(self, s: Slot) -> None:
        # Removing a whole sequence always succeeds, recurrent state included.
        llama_cpp.llama_memory_seq_rm(self.mem, s.seq, -1, -1)
        s.cache.clear()
        s.checkpoints = []

    # --- moving states out of slots --------------------------------------------------------

    def _stash(self, s: Slot, keep: int) -> None:
        """Copy the slot's state to the RAM tier (or the disk tier without one) before its
        memory is cut to ``keep`` tokens, unless most of it stays or a tier holds it already."""
        if (self.ram is None and self.disk is None) or len(s.cache) < MIN_STASH_TOKENS:
            return
        if keep >= KEEP_SHARE * len(s.cache):
            return
        if self.ram is not None and self.ram.covers(s.cache):
            return
        entry = self._entry_of(s)
        if entry is None:
            return
        if self.ram is None:
            self._spill(entry)
            return
        for old in self.ram.put(entry, cuttable=self.cuttable):
            self._spill(old)

    def _entry_of(self, s: Slot) -> Entry | None:
        data = read_state(self.ctx, s.seq, STATE_FULL)
        if data is None:
            logger.warning("prompt cache: llama.cpp gives no sequence state here; RAM tier off")
            self.ram = None
            return None
        return Entry(list(s.cache), data, list(s.checkpoints))

    def _spill(self, entry: Entry) -> None:
        if self.disk is not None and not self.disk.holds(entry.tokens):
            self.disk.put(entry)

    def persist_all(self) -> None:
        """Write every idle slot's state and every RAM state to the disk tier (at shutdown),
        and wait for the writes."""
        if self.disk is None:
            return
        for s in self.slots:
            if s.req is None and len(s.cache) >= MIN_STASH_TOKENS and not self.disk.holds(s.cache):
                entry = self._entry_of(s)
                if entry is not None:
                    self.disk.put(entry)
        if self.ram is not None:
            for e in reversed(self.ram.entries):
                self._spill(e)
        self.disk.close()

    def clear_tiers(self) -> None:
        """Forget the RAM tier and every slot's checkpoints (the disk tier stays)."""
        if self.ram is not None:
            self.ram.clear()
        for s in self.slots:
            if s.req is None:
                s.checkpoints = []

    # --- checkpoints -------------------------------------------------------------------------

    def _checkpoint_plan(self, n_keep: int, n_prompt: int) -> list[int]:
        """Prompt positions at which to snapshot the partial state during this prefill: every
        ``checkpoint_every`` tokens, ``TAIL`` tokens before the end, and the end."""
        if not self.needs_checkpoints or self.cache_opts.checkpoints == 0:
            return []
        every = self.cache_opts.checkpoint_every
        marks = set(range((n_keep // every + 1) * every, n_prompt, every))
        marks.update((n_prompt - TAIL, n_prompt))
        return sorted(m for m in marks if m > n_keep)

    def _take_checkpoint(self, s: Slot) -> None:
        """Snapshot the slot's partial state now (it has consumed ``len(s.cache)`` tokens)."""
        n = len(s.cache)
        if s.checkpoints and s.checkpoints[-1].n_tokens >= n:
            return
        data = read_state(self.ctx, s.seq, STATE_PARTIAL)
        if data is None:
            return
        s.checkpoints.append(Checkpoint(n, data))
        del s.checkpoints[: max(0, len(s.checkpoints) - self.cache_opts.checkpoints)]

    def _turn_checkpoint(self, s: Slot) -> None:
        """At the end of a turn: a checkpoint of the state the turn leaves."""
        if self.needs_checkpoints and self.cache_opts.checkpoints > 0 and s.cache:
            self._take_checkpoint(s)

    # --- slot files (the /slots API) -------------------------------------------------------

    def _idle_slot(self, slot_id: int) -> Slot:
        if not 0 <= slot_id < len(self.slots):
            raise InvalidRequestError(
                f"no slot {slot_id}: this model has slots 0..{len(self.slots) - 1}", param="id_slot"
            )
        s = self.slots[slot_id]
        if s.req is not None:
            raise InvalidRequestError(f"slot {slot_id} is busy with a request", param="id_slot")
        return s

    def slot_entry(self, slot_id: int) -> Entry:
        """A copy of an idle slot's state.

        Raises:
            InvalidRequestError: no such slot, it is busy, or it holds nothing.
        """
        s = self._idle_slot(slot_id)
        if not s.cache:
            raise InvalidRequestError(f"slot {slot_id} holds no prompt", param="id_slot")
        data = read_state(self.ctx, s.seq, STATE_FULL)
        if data is None:
            raise InvalidRequestError("llama.cpp gives no sequence state for this model")
        return Entry(list(s.cache), data, list(s.checkpoints))

    def slot_restore(self, slot_id: int, entry: Entry) -> None:
        """Put ``entry``'s state into an idle slot (what it held is dropped).

        Raises:
            InvalidRequestError: no such slot, it is busy, or llama.cpp refused the state.
        """
        s = self._idle_slot(slot_id)
        self._forget(s)
        if not self._restore(s, entry):
            raise InvalidRequestError(f"the state could not be restored into slot {slot_id}")

    def slot_erase(self, slot_id: int) -> int:
        """Empty an idle slot; returns the tokens it held.

        Raises:
            InvalidRequestError: no such slot, or it is busy.
        """
        s = self._idle_slot(slot_id)
        n = len(s.cache)
        self._forget(s)
        return n

    # --- numbers (any thread) ----------------------------------------------------------------

    def cache_stats(self) -> PromptCacheStats:
        ram, disk, c = self.ram, self.disk, self.counters
        ckpt = sum(len(k.data) for s in list(self.slots) for k in list(s.checkpoints))
        n_ckpt = sum(len(s.checkpoints) for s in list(self.slots))
        return PromptCacheStats(
            lookups=c.lookups,
            hits=dict(c.hits),
            bytes={
                "ram": ram.held if ram else 0,
                "checkpoints": ckpt,
                "disk": disk.held if disk else 0,
            },
            entries={
                "ram": len(ram) if ram else 0,
                "checkpoints": n_ckpt,
                "disk": len(disk) if disk else 0,
            },
            ram_cap=ram.cap if ram else 0,
            cached_tokens=c.cached_tokens,
            prompt_tokens=c.prompt_tokens,
        )


def layout_key(*, unified: bool, n_seq: int, cache_types: tuple[str, str] = ("f16", "f16")) -> str:
    """What a saved state's block layout depends on: one KV stream, or one per sequence, and
    the KV cache's element types (named only when they are not llama.cpp's f16 default, so
    states saved before the types were a setting still match)."""
    key = "unified" if unified else f"per-slot:{n_seq}"
    if cache_types != ("f16", "f16"):
        key += ";kv={}/{}".format(*cache_types)
    return key


__all__ = ["PromptCacheTiers", "layout_key"]
