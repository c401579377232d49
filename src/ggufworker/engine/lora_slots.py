"""LoRA adapter sets in the scheduler (scheduler thread only; see :mod:`ggufworker.engine.lora`).

llama.cpp applies one adapter set to a whole decode, so each step decodes the slots of one set;
the sets with work take turns (the next set after the last one served, one step each). A slot's
memory is keyed by the set it was computed under: the prompt cache's slot choice reuses it only
for the same set, and states computed under an adapter never go to the RAM or disk tiers.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.admission import SlotMemory
from ggufworker.engine.lora import LoraKey
from ggufworker.engine.prompt_cache import Checkpoint, Entry
from ggufworker.engine.slots import Slot
from ggufworker.errors import GenerationError, InvalidRequestError


class LoraSlots(SlotMemory):
    """Adapter sets in the scheduler: one set per decode, round-robin; KV keyed by set."""

    ctx: Any
    waiting: Any
    _batch_slots: list[Slot]

    def _init_lora_slots(self) -> None:
        self.lora_ptrs: dict[int, Any] = {}
        self._lora_applied: LoraKey = ()
        self._lora_last: LoraKey | None = None
        self._placing: LoraKey = ()

    def add_lora(self, lora_id: int, ptr: Any) -> None:
        self.lora_ptrs[lora_id] = ptr

    def drop_lora(self, lora_id: int, name: str) -> None:
        """End the requests under adapter ``lora_id``, drop KV computed under it, free it."""
        err = GenerationError(f"the LoRA adapter {name!r} was unloaded")
        uses = lambda key: any(i == lora_id for i, _ in key)  # noqa: E731
        for req in [r for r in self.waiting if uses(r.lora_key)]:
            self.waiting.remove(req)
            self._retire(req, 0, 0)  # type: ignore[attr-defined]
            req.handle._deliver(err)
        for s in self.slots:
            if s.req is not None and uses(s.req.lora_key):
                req = s.req
                self._release(s)  # type: ignore[attr-defined]
                req.handle._deliver(err)
            if uses(s.lora_key):
                self._forget(s)
                s.lora_key = ()
        if uses(self._lora_applied):
            self.use_lora(())
        ptr = self.lora_ptrs.pop(lora_id, None)
        if ptr is not None:
            llama_cpp.llama_adapter_lora_free(ptr)

    def use_lora(self, key: LoraKey) -> None:
        """Make ``key`` the context's adapter set (no call when it already is)."""
        if key == self._lora_applied:
            return
        n = len(key)
        if n:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * n)(
                *(self.lora_ptrs[i] for i, _ in key)
            )
            scales = (ctypes.c_float * n)(*(s for _, s in key))
            llama_cpp.llama_set_adapters_lora(self.ctx, adapters, n, scales)
        else:
            llama_cpp.llama_set_adapters_lora(self.ctx, None, 0, None)
        self._lora_applied = key

    def _turn(self, active: list[Slot]) -> list[Slot]:
        """The slots this step decodes: those of one adapter set, the sets taking turns (the
        next set after the last one served, in key order), and that set applied."""
        if not self._lora_applied and not any(s.req is not None and s.req.lora_key for s in active):
            self._batch_slots = active  # the base only (the usual case): nothing to do
            return active
        # a request that named an adapter unloaded before it reached this thread
        for s in active:
            req = s.req
            if req is not None and any(i not in self.lora_ptrs for i, _ in req.lora_key):
                self._release(s)  # type: ignore[attr-defined]
                req.handle._deliver(GenerationError("its LoRA adapter was unloaded"))
        active = [s for s in active if s.req is not None]
        keys = sorted({s.req.lora_key for s in active if s.req is not None})
        if not keys:
            self._batch_slots = active
            return active
        last = self._lora_last
        key = next((k for k in keys if last is not None and k > last), keys[0])
        self._lora_last = key
        self.use_lora(key)
        chosen = [s for s in active if s.req is not None and s.req.lora_key == key]
        self._batch_slots = chosen
        return chosen

    # --- prefix reuse keyed by set (overrides of the prompt cache's slot choice) ---

    def _place(
        self, free: list[Slot], tokens: list[int]
    ) -> tuple[Slot, int, Checkpoint | None, str]:
        # _admit places the request at the head of the queue
        key: LoraKey = self.waiting[0].lora_key if self.waiting else ()
        self._placing = key
        try:
            slot, n, ck, tier = super()._place(free, tokens)
        finally:
            self._placing = ()
        if slot.lora_key != key:
            if slot.cache:  # computed under another set: never reused for this one
                self._stash(slot, 0)
                self._forget(slot)
            slot.lora_key = key
            n, ck, tier = 0, None, "slot"
        return slot, n, ck, tier

    def _in_place(self, s: Slot, tokens: list[int]) -> tuple[int, Checkpoint | None]:
        if s.cache and s.lora_key != self._placing:
            return 0, None
        return super()._in_place(s, tokens)

    def _usable(
        self, cached: list[int], checkpoints: Sequence[Checkpoint], tokens: list[int]
    ) -> int:
        if self._placing:  # the tiers hold base states only
            return 0
        return super()._usable(cached, checkpoints, tokens)

    def _stash(self, s: Slot, keep: int) -> None:
        if s.lora_key:  # a state computed under an adapter stays out of the tiers
            return
        super()._stash(s, keep)

    def _entry_of(self, s: Slot) -> Entry | None:
        if s.lora_key:
            return None
        return super()._entry_of(s)

    def _restore(self, s: Slot, entry: Entry) -> bool:
        ok = super()._restore(s, entry)
        if ok:
            s.lora_key = ()  # tier and slot-file states are base states
        return ok

    def slot_entry(self, slot_id: int) -> Entry:
        s = self._idle_slot(slot_id)
        if s.lora_key:
            raise InvalidRequestError(
                f"slot {slot_id} holds a prompt computed under a LoRA adapter; only base "
                "states are saved",
                param="id_slot",
            )
        return super().slot_entry(slot_id)


__all__ = ["LoraSlots"]
