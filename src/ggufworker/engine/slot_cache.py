"""The engine's prompt-cache surface: what idle slots and the RAM tier hold, and slot files
(llama-server's ``/slots`` save, restore and erase). Mixed into :class:`~ggufworker.engine.Engine`;
the work itself runs on the scheduler thread (``engine/cache_tiers.py``, ``state_files.py``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ggufworker.engine.model import Model
from ggufworker.engine.prompt_cache import PromptCacheStats
from ggufworker.engine.scheduler import Scheduler
from ggufworker.engine.slots import common_prefix
from ggufworker.engine.state_files import (
    StateFileError,
    model_digest,
    read_state_file,
    write_state_file,
)
from ggufworker.errors import InvalidRequestError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class SlotFileResult:
    """What a slot save or restore moved: tokens, file bytes, milliseconds."""

    slot: int
    n_tokens: int
    n_bytes: int
    ms: float


@dataclass(frozen=True)
class SlotState:
    """One slot as ``GET /slots`` reports it: its id, the request running in it (None: idle)
    and the tokens its memory holds."""

    id: int
    request_id: str | None
    n_cached: int


class SlotCache:
    """Prompt-cache and slot-file methods of the engine (see the module doc)."""

    _sched: Scheduler
    _model: Model
    _digest: str | None
    _layout: str

    def _call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError  # the engine's

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` an idle slot already holds in its KV cache (what
        admission would reuse now). Read without stopping the scheduler, so it is a hint for
        routing that may be one step stale."""
        wanted = list(tokens)
        best = 0
        for slot in self._sched.slots:
            if slot.req is None and slot.cache:
                # list() copies in one step under the GIL while the scheduler may append
                best = max(best, common_prefix(list(slot.cache), wanted))
        ram = self._sched.ram
        for cached in ram.snapshot() if ram is not None else ():
            best = max(best, common_prefix(cached, wanted))
        return best

    def kv_usage(self) -> float:
        """The share (0..1) of the KV cache holding tokens: cells in use over the pool's cells
        (one pool shared by the slots, or a stream per slot), or, for fixed-size recurrent
        state, the share of sequences in use. Read without stopping the scheduler (a gauge,
        possibly one step stale)."""
        sched = self._sched
        slots = list(sched.slots)
        if not slots:
            return 0.0
        if sched.state_memory and not sched.kv_cells:
            return sum(1 for s in slots if s.req is not None or s.cache) / len(slots)
        capacity = sched.n_ctx if sched.kv_cells else sched.n_ctx * len(slots)
        used = sum(len(s.cache) for s in slots)
        return min(1.0, used / capacity) if capacity > 0 else 0.0

    def clear_cache(self) -> None:
        """Forget every idle slot's cached prefix, their checkpoints and the RAM tier (the next
        requests start cold unless the disk tier holds their prompt)."""
        self._call(self._sched.clear_idle_caches)

    def cache_stats(self) -> PromptCacheStats:
        """What the prompt cache holds and how often it served (any thread)."""
        return self._sched.cache_stats()

    # --- slot files (llama-server's /slots save, restore, erase) -------------------------------

    def _file_owner(self) -> tuple[str, str]:
        if self._digest is None:
            self._digest = model_digest(self._model.path)
        return self._digest, self._layout

    def save_slot(self, slot: int, path: str | os.PathLike[str]) -> SlotFileResult:
        """Write an idle slot's state (its tokens, KV or recurrent state, checkpoints) to
        ``path`` (a temporary file beside it, then renamed).

        Raises:
            InvalidRequestError: no such slot, it is busy or empty.
            OSError: the file cannot be written.
        """
        t0 = time.perf_counter()
        entry = self._call(lambda: self._sched.slot_entry(slot))
        model, layout = self._file_owner()
        n = write_state_file(Path(path), entry, model=model, layout=layout)
        return SlotFileResult(slot, len(entry.tokens), n, (time.perf_counter() - t0) * 1e3)

    def restore_slot(self, slot: int, path: str | os.PathLike[str]) -> SlotFileResult:
        """Load a state saved by :meth:`save_slot` into an idle slot; its next request reuses
        the saved prompt like a slot's own cache.

        Raises:
            InvalidRequestError: no such slot, it is busy, or the file is missing, corrupt,
                or saved from another model or memory layout (never given to llama.cpp).
        """
        t0 = time.perf_counter()
        model, layout = self._file_owner()
        if not Path(path).is_file():
            raise InvalidRequestError(f"no saved slot file {Path(path).name}", param="filename")
        try:
            entry, n = read_state_file(Path(path), model=model, layout=layout)
        except StateFileError as exc:
            logger.warning("slot restore: %s", exc)
            raise InvalidRequestError(str(exc), param="filename") from None
        self._call(lambda: self._sched.slot_restore(slot, entry))
        return SlotFileResult(slot, len(entry.tokens), n, (time.perf_counter() - t0) * 1e3)

    def erase_slot(self, slot: int) -> int:
        """Empty an idle slot's memory; returns the tokens it held.

        Raises:
            InvalidRequestError: no such slot, or it is busy.
        """
        return self._call(lambda: self._sched.slot_erase(slot))

    def slot_states(self) -> list[SlotState]:
        """Each slot's request and cached tokens, read without stopping the scheduler (a
        snapshot that may be one step stale)."""
        out = []
        for slot in self._sched.slots:
            req = slot.req  # read once: the scheduler thread may clear it meanwhile
            out.append(SlotState(slot.seq, req.id if req is not None else None, len(slot.cache)))
        return out
