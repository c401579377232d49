"""Speculation in the scheduler (scheduler thread only; see :mod:`ggufworker.engine.speculation`).

:meth:`SpecSlots._plan_drafts` gives the step's decoding slots their drafts before the batch is
built (the batch then holds, per speculating slot, its sampled token and the drafts, each with
logits); :meth:`SpecSlots._verify` walks those rows after the decode, emits every accepted token,
keeps the first differing one as the slot's next token and removes the rejected drafts' cells.

Speculation is off for memory that cannot be cut back (recurrent and hybrid state, sliding
windows): rejected drafts could not be removed. A request takes part when it is greedy or drawn
by a :class:`~ggufworker.engine.batch_sampling.RowSampler` on the host, asks no logprobs and no
thinking budget, and did not turn it off.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.batch_sampling import sample_rows
from ggufworker.engine.sampling import biased_argmax
from ggufworker.engine.slots import Request, Slot
from ggufworker.engine.speculation import (
    NgramIndex,
    SlotSpec,
    SpecCounters,
    SpecPlanner,
    SpeculationOptions,
)
from ggufworker.engine.speculation_draft import DraftModel
from ggufworker.errors import GenerationError

logger = logging.getLogger(__name__)


class SpecSlots:
    """Drafts and their verification, mixed into the scheduler."""

    ctx: Any
    mem: Any
    model: Any
    batch: Any
    n_ctx: int
    n_batch: int
    _n_out: int
    n_vocab: int
    cuttable: bool
    pipeline: bool

    def _init_speculation(self, opts: SpeculationOptions, draft: DraftModel | None) -> None:
        self.spec_opts = opts
        # rejected drafts must be removable: only memory that can be cut back speculates
        self.spec_on = opts.enabled and self.cuttable
        if opts.enabled and not self.cuttable:
            logger.info(
                "speculation off: this model's memory (recurrent state or a sliding window) "
                "cannot be cut back to remove rejected drafts"
            )
        self.draft_model = draft if self.spec_on else None
        self.planner = SpecPlanner(opts, gpu=self.model.backend == "gpu")
        self.spec_counters = SpecCounters()

    def _observe_step(self, n_tokens: int, seconds: float) -> None:
        """A decode-only step's time, for the planner's cost model."""
        if self.spec_on:
            self.planner.cost.observe(n_tokens, seconds)

    # --- before the decode -----------------------------------------------------------------

    def _add_decoding(
        self, decoding: list[Slot], prefilling: list[Slot], free_cells: int
    ) -> tuple[int, int]:
        """Put each decoding slot's next token in the step's batch, followed by its drafts
        (all with logits); returns (output rows, draft tokens)."""
        batch = self.batch
        n_draft = 0
        if self.spec_on:
            room = min(self.n_batch, free_cells) - len(decoding)
            prefill = sum(len(s.req.tokens) - s.prefill_pos for s in prefilling if s.req)
            n_draft = self._plan_drafts(decoding, room, len(decoding) + min(prefill, room))
        n_out = 0
        for s in decoding:
            s.out_idx = batch.add(s.next_token, len(s.cache), s.seq, True)
            s.out_row = n_out
            for i, tok in enumerate(s.draft, 1):
                batch.add(tok, len(s.cache) + i, s.seq, True)
            n_out += 1 + len(s.draft)
        return n_out, n_draft

    def _plan_drafts(self, decoding: list[Slot], room: int, n_base: int) -> int:
        """Give each speculating slot of ``decoding`` its drafts for this step (``slot.draft``)
        within ``room`` batch positions and cells; returns how many draft tokens were added.
        ``n_base``: the tokens the step decodes anyway."""
        for s in decoding:
            s.draft = []
        if room <= 0:
            return 0
        opts = self.spec_opts
        cands: list[Slot] = []
        avail: list[int] = []
        found: list[list[int]] = []
        for s in decoding:
            req = s.req
            if req is None or not req.speculative:
                continue
            if s.spec.owner is not req:  # acceptance and n-grams are the request's own
                s.spec = SlotSpec(owner=req)
            # leave room for the bonus token and the request's remaining budget
            left = self.n_ctx - len(s.cache) - 2
            if req.params.max_tokens is not None:
                left = min(left, req.params.max_tokens - s.n_gen - 1)
            n = min(opts.n_max, left)
            if n <= 0:
                continue
            if self.draft_model is None:
                toks = self._lookup(s, n)
                if not toks:
                    continue
                found.append(toks)
                n = len(toks)
            cands.append(s)
            avail.append(n)
        if not cands:
            return 0
        ks = self.planner.plan(
            n_base,
            [(s.spec, n) for s, n in zip(cands, avail, strict=True)],
            shared_depth=self.draft_model is not None,
        )
        total = 0
        chosen: list[tuple[Slot, int]] = []
        for s, k in zip(cands, ks, strict=True):
            k = min(k, room - total)
            if k > 0:
                chosen.append((s, k))
                total += k
        if not chosen:
            return 0
        if self.draft_model is None:
            by_slot = {id(s): toks for s, toks in zip(cands, found, strict=True)}
            for s, k in chosen:
                s.draft = by_slot[id(s)][:k]
            return total
        try:
            drafts, per_depth = self.draft_model.draft(
                [(s.seq, s.cache, s.next_token, k) for s, k in chosen]
            )
        except Exception:  # the draft model failing must not fail the requests
            logger.exception("draft model failed; this step decodes without drafts")
            for s, _ in chosen:
                self.draft_model.forget(s.seq)
            return 0
        if per_depth > 0:
            self.planner.observe_draft(per_depth)
        for (s, k), toks in zip(chosen, drafts, strict=True):
            s.draft = toks[:k]
        return sum(len(s.draft) for s, _ in chosen)

    def _lookup(self, s: Slot, n: int) -> list[int]:
        """Prompt lookup over the request's own tokens (the slot's KV tokens)."""
        index = s.spec.index
        if index is None:
            index = s.spec.index = NgramIndex(self.spec_opts.ngram_sizes)
        index.extend(s.cache)
        return index.lookup(s.next_token, n)

    # --- after the decode ------------------------------------------------------------------

    def _verify(self, slots: list[Slot], logits: np.ndarray | None, now: float) -> None:
        """Walk each speculating slot's rows: emit accepted tokens, keep the first target token
        that differs from the draft as the next token, remove the rejected drafts' cells."""
        for s in slots:
            drafts, s.draft = s.draft, []
            req = s.req
            if req is not None:
                if logits is None:
                    logits = np.ctypeslib.as_array(
                        llama_cpp.llama_get_logits(self.ctx),
                        shape=(self._n_out, self.n_vocab),
                    )
                try:
                    self._walk(s, req, drafts, logits, now)
                except Exception as exc:  # one sequence's failure ends only that request
                    logger.exception("request %s failed", req.id)
                    if s.req is req:
                        self._release(s)  # type: ignore[attr-defined]
                    req.handle._deliver(GenerationError(f"generation failed: {exc}"))
            # the KV holds next_token + drafts; keep what s.cache says it holds
            llama_cpp.llama_memory_seq_rm(self.mem, s.seq, len(s.cache), -1)

    def _walk(
        self, s: Slot, req: Request, drafts: list[int], logits: np.ndarray, now: float
    ) -> None:
        accepted = 0
        for i in range(len(drafts) + 1):
            row = s.out_row + i
            if req.greedy:
                if req.bias is None:
                    tok = int(logits[row].argmax())
                else:
                    tok = biased_argmax(logits[row], *req.bias)
            else:
                assert req.sampler is not None
                tok = sample_rows(logits, [row], [req.sampler])[0]
                req.sampler.accept(tok)
            hit = i < len(drafts) and tok == drafts[i]
            self._sample(s, req, tok, now)  # type: ignore[attr-defined]
            if s.req is not req:
                break  # ended (end of generation, length)
            if not hit:
                break  # tok is the next token to decode
            # an accepted draft: its KV is already there
            accepted += 1
            s.cache.append(tok)
            self._emit(s)  # type: ignore[attr-defined]
            if s.req is not req:
                break  # a stop string
        self.spec_counters.count(len(drafts), accepted)
        s.spec.record(len(drafts), accepted)
