"""The prompt cache beyond a slot's own memory: sequence states kept in host RAM, and the
partial snapshots ("checkpoints") that let memory which cannot be cut back resume mid-prompt.

A slot's memory (engine/admission.py) keeps the KV of the last prompt it served. When a slot is
given to another conversation, its whole sequence state (``llama_state_seq_get_data_ext`` with
no flags: every layer's KV, or the recurrent state, of that one sequence) is copied into a
:class:`RamTier`, bounded in bytes and dropped least recently used first. A later request whose
prompt shares a prefix with a kept state has it copied back into its slot
(``llama_state_seq_set_data_ext``) and prefills only the rest.

Memory that cannot be cut back to an arbitrary position needs more than the whole state:

- a sliding-window cache (``n_swa > 0``) keeps only the last window of its SWA layers (a
  state read from llama.cpp holds only the cells the window still sees, whatever
  ``swa_full``), so a restored state can only be extended;
- a recurrent or hybrid model's state has consumed every token (``seq_rm`` of a partial
  range fails).

For them the scheduler takes checkpoints while it prefills: the partial state
(``LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY``: the SWA cells, or the recurrent state) after exactly
``n_tokens`` prompt tokens. A prompt that leaves a cached one at position p resumes from the
latest checkpoint at or before p: the partial state is written back, and the full-attention KV
(which can be cut) is cut to the checkpoint's position.

The scheduler thread is the only user of these objects, except :meth:`RamTier.snapshot`,
which other threads may call to read the cached prefixes.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ggufworker.engine._native import llama_cpp

logger = logging.getLogger(__name__)

MIB = 1 << 20
#: whole sequence state: every part of the memory
STATE_FULL = 0
#: only the parts that cannot be cut back: SWA cells, recurrent state
STATE_PARTIAL = int(llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)


@dataclass(frozen=True)
class PromptCacheOptions:
    """How much the engine keeps of prompts it has seen (see docs/ENGINE.md, "Prompt cache").

    Attributes:
        ram_mib: host RAM for the states of slots given to other prompts (0: none).
        checkpoints: partial-state snapshots kept per slot for sliding-window, recurrent and
            hybrid models (0: none; such a prompt then resumes only by extension).
        checkpoint_every: prompt tokens between two snapshots during a long prefill (the
            prompt's end and the position 4 tokens before it always get one).
        similarity: share of a prompt a free slot's cached prefix must cover for the request
            to reuse that slot in place; below it the request takes an empty or the least
            recently used slot (a slot's state then goes to the RAM tier), as llama-server's
            ``--slot-prompt-similarity``.
        disk_dir: a directory where states persist across restarts (None: no disk tier).
        disk_mib: the most the disk tier keeps; the oldest files go first.
    """

    ram_mib: int = 1024
    checkpoints: int = 8
    checkpoint_every: int = 2048
    similarity: float = 0.1
    disk_dir: Path | None = None
    disk_mib: int = 4096

    def __post_init__(self) -> None:
        if self.ram_mib < 0 or self.checkpoints < 0 or self.disk_mib < 0:
            raise ValueError("prompt cache sizes must be >= 0")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        if not 0.0 <= self.similarity <= 1.0:
            raise ValueError("similarity must be in 0..1")


#: a state's bytes: read from llama.cpp into a bytearray and kept as it is (never changed
#: afterwards), so that neither reading nor restoring copies it once more
StateBytes = bytes | bytearray


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """The partial state of a sequence that has consumed exactly ``n_tokens`` tokens."""

    n_tokens: int
    data: StateBytes


@dataclass(eq=False)
class Entry:
    """A whole sequence state and the tokens it holds, with the checkpoints taken on the way."""

    tokens: list[int]
    data: StateBytes
    checkpoints: list[Checkpoint] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.data) + sum(len(c.data) for c in self.checkpoints)


def read_state(ctx: llama_cpp.llama_context_p, seq: int, flags: int) -> bytearray | None:
    """A copy of one sequence's state (None when llama.cpp gives none)."""
    n = int(llama_cpp.llama_state_seq_get_size_ext(ctx, seq, flags))
    if n <= 0:
        return None
    buf = bytearray(n)
    arr = (ctypes.c_uint8 * n).from_buffer(buf)
    got = int(llama_cpp.llama_state_seq_get_data_ext(ctx, arr, n, seq, flags))
    del arr
    if got != n:
        logger.warning("sequence %d: llama.cpp wrote %d of %d state bytes", seq, got, n)
        return None
    return buf


def write_state(ctx: llama_cpp.llama_context_p, seq: int, data: StateBytes, flags: int) -> bool:
    """Replace one sequence's state (or, with ``STATE_PARTIAL``, its partial state) by
    ``data``. On failure llama.cpp leaves the part it was restoring empty."""
    n = len(data)
    # llama.cpp only reads it; a bytearray is passed as it is, bytes are copied once
    kind = ctypes.c_uint8 * n
    arr = kind.from_buffer(data) if isinstance(data, bytearray) else kind.from_buffer_copy(data)
    try:
        return int(llama_cpp.llama_state_seq_set_data_ext(ctx, arr, n, seq, flags)) == n
    finally:
        del arr


def latest_checkpoint(checkpoints: Sequence[Checkpoint], n: int) -> Checkpoint | None:
    """The checkpoint with the most tokens, at most ``n`` (and at least one)."""
    best = None
    for c in checkpoints:
        if 0 < c.n_tokens <= n and (best is None or c.n_tokens > best.n_tokens):
            best = c
    return best


#: (entry tokens, entry checkpoints, prompt) -> tokens of the prompt that entry can serve
Usable = Callable[[list[int], Sequence[Checkpoint], list[int]], int]


class RamTier:
    """Sequence states in host RAM, at most ``cap`` bytes, least recently used dropped first."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.entries: list[Entry] = []  # least recently used first
        self.held = 0

    def __len__(self) -> int:
        return len(self.entries)

    def covers(self, tokens: list[int]) -> bool:
        """Whether some entry already holds ``tokens`` (or a longer run starting with them)."""
        n = len(tokens)
        return any(len(e.tokens) >= n and e.tokens[:n] == tokens for e in self.entries)

    def put(self, entry: Entry, *, cuttable: bool) -> list[Entry]:
        """Keep ``entry``; returns the entries dropped to make room (the caller may spill
        them to disk). Entries ``entry`` serves entirely go first: those whose tokens it
        extends, when its memory can be cut back anywhere (``cuttable``) or it has a
        checkpoint at their end."""
        if entry.size > self.cap:
            return [entry]
        ends = {c.n_tokens for c in entry.checkpoints}
        kept = []
        for e in self.entries:
            n = len(e.tokens)
            if n <= len(entry.tokens) and (cuttable or n in ends) and entry.tokens[:n] == e.tokens:
                self.held -= e.size
            else:
                kept.append(e)
        self.entries = kept
        dropped: list[Entry] = []
        while self.entries and self.held + entry.size > self.cap:
            old = self.entries.pop(0)
            self.held -= old.size
            dropped.append(old)
        self.entries.append(entry)
        self.held += entry.size
        return dropped

    def best(self, tokens: list[int], usable: Usable) -> tuple[Entry | None, int]:
        """The entry serving the most tokens of ``tokens`` (ties: the most recent)."""
        best: Entry | None = None
        n_best = 0
        for e in self.entries:
            n = usable(e.tokens, e.checkpoints, tokens)
            if n >= n_best and n > 0:
                best, n_best = e, n
        return best, n_best

    def touch(self, entry: Entry) -> None:
        """Mark ``entry`` most recently used."""
        if entry in self.entries:
            self.entries.remove(entry)
            self.entries.append(entry)
            entry.last_used = time.monotonic()

    def clear(self) -> None:
        self.entries.clear()
        self.held = 0

    def snapshot(self) -> list[list[int]]:
        """The cached token runs (any thread: copies the list in one step under the GIL)."""
        return [e.tokens for e in list(self.entries)]


@dataclass(frozen=True)
class PromptCacheStats:
    """What the prompt cache holds and how often it served a prompt.

    ``lookups`` counts admitted requests; ``hits`` maps where their cached tokens came from
    (``slot``: the slot's own memory, ``checkpoint``: a checkpoint of it, ``ram``, ``disk``)
    to requests served that way; ``bytes`` maps ``ram``, ``checkpoints`` (held by slots) and
    ``disk`` to bytes held; ``cached_tokens`` and ``prompt_tokens`` sum over lookups.
    """

    lookups: int
    hits: dict[str, int]
    bytes: dict[str, int]
    entries: dict[str, int]
    ram_cap: int
    cached_tokens: int
    prompt_tokens: int


class CacheCounters:
    """Lookup and hit counts of the prompt cache (written by the scheduler thread)."""

    TIERS = ("slot", "checkpoint", "ram", "disk")

    def __init__(self) -> None:
        self.lookups = 0
        self.hits = dict.fromkeys(self.TIERS, 0)
        self.cached_tokens = 0
        self.prompt_tokens = 0

    def count(self, tier: str | None, n_cached: int, n_prompt: int) -> None:
        self.lookups += 1
        self.cached_tokens += n_cached
        self.prompt_tokens += n_prompt
        if tier is not None and n_cached > 0:
            self.hits[tier] += 1
