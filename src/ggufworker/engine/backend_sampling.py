"""Backend sampling: sampler chains attached to sequences in llama.cpp's decode graph.

The pinned llama.cpp can run a sequence's sampler chain inside the decode graph
(``llama_set_sampler``; its samplers for logit bias, penalties, top-k, top-p, min-p,
temperature and dist have graph versions). Three modes:

- "cut" (sampled, ``0 < top_k <= 64``, no penalties, a logit bias only of bans; most
  traffic): the graph cuts every such row of the step to its top 64 at once
  (engine/graph_cut.py) and copies back only those; the host adds the bans, cuts each row to
  its top-k and draws, for all rows together
  (:func:`~ggufworker.engine.batch_sampling.draw_candidates`), with the request's own generator,
  as the host sampler draws from its own exact top-k of the copied logits.
- "top-k" (the other sampled requests with top-k on): the request's chain stops at top-k, so
  the graph applies its bias and penalties and cuts its row to its top-k (one sort per row);
  the host draws the same way.
- "chain" (top-k off, or greedy with penalties): the whole chain runs in the graph (~35 nodes
  per sequence); its ``dist`` draws the host chain's uniforms.

Attaching or detaching a chain makes llama.cpp re-plan its graph, so a slot keeps its chain for
the next request whose graph part is the same (reset: the seed and the penalty history start
again) and lets it go when it has been idle for :data:`CHAIN_IDLE_S` or a request without a
chain takes the slot (an attached chain would keep that sequence's logits in the graph). With
``auto`` a request that would be the only sampled one running is drawn on the host instead
(:data:`AUTO_MIN_ROWS`): a lone client would otherwise pay the re-plan before each first token.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from ggufworker.engine import graph_cut
from ggufworker.engine._native import llama_cpp
from ggufworker.engine.batch_sampling import draw_candidates, vectorised
from ggufworker.engine.graph_cut import read_candidates
from ggufworker.engine.sampling import build_chain, chain_key, free_chain
from ggufworker.engine.slots import Request, Slot
from ggufworker.engine.types import SamplingParams

logger = logging.getLogger(__name__)

#: ``on`` draws sampled requests through llama.cpp's graph, ``off`` on the host (numpy, all
#: rows of a step at once), ``auto`` on for GPU backends
BackendSampling = Literal["auto", "on", "off"]

#: seconds an idle slot keeps its backend sampler chain attached (see ``_detach_idle``)
CHAIN_IDLE_S = 0.25
#: with ``auto``, the fewest sampled requests running together (the new one included) for
#: which a slot without a chain gets one attached; below it the request is drawn on the host
#: from its copied row (:meth:`AttachedChains._on_host`)
AUTO_MIN_ROWS = 2
#: modes whose rows the graph cuts and the host draws from (with the request's RowSampler)
HOST_DRAWN = frozenset({"cut", "top-k"})


def enabled(mode: str, backend: str) -> bool:
    """Whether ``mode`` puts sampling into llama.cpp's graph on this backend (``gpu`` or
    ``cpu``): ``auto`` does on GPU backends only (measured on the 2-core VM, SmolLM2, 8 sampled
    streams: 192 tok/s with it against 200 with the host sampler, single stream equal;
    docs/ENGINE.md)."""
    return mode == "on" or (mode == "auto" and backend == "gpu")


def request_mode(params: SamplingParams, n_vocab: int) -> str:
    """How a request is sampled with backend sampling on: ``cut``, ``top-k``, ``chain``, or
    ``""`` (greedy, grammars and logprobs keep the host paths: llama.cpp does not copy back the
    raw logits of a sequence that has a backend sampler)."""
    if not vectorised(params) or params.logprobs is not None:
        return ""
    if params.temperature <= 0 or params.top_k <= 0:
        return "chain"
    if graph_cut.serves(params, n_vocab):
        return "cut"
    return "top-k"


class AttachedChains:
    """Chains attached to the slots' sequences, mixed into the scheduler (scheduler thread
    only)."""

    ctx: Any
    model: Any
    n_vocab: int
    slots: list[Slot]
    cutter: graph_cut.GraphCut
    #: fewest sampled requests running together worth attaching a chain for (1: always;
    #: :data:`AUTO_MIN_ROWS` with ``auto``)
    min_rows: int = 1

    def _on_host(self, slot: Slot, req: Request) -> bool:
        """Whether a backend-drawn request is drawn on the host instead: its slot has no chain
        and fewer than :attr:`min_rows` sampled requests would run with it. Attaching or
        detaching a chain makes llama.cpp reserve its graph again at the next decode (the
        first token waits for it), and one sampled row is drawn as fast on the host from its
        copied logits (docs/BACKENDS.md, "On the GPU")."""
        if self.min_rows <= 1 or slot.chain or req.backend not in HOST_DRAWN:
            return False
        running = sum(
            1 for s in self.slots if s is not slot and s.req is not None and s.req.sampler
        )
        return running + 1 < self.min_rows

    def _attach_sampler(self, slot: Slot, req: Request) -> None:
        """Give a backend-sampled request the slot's chain in llama.cpp's graph: the attached
        one reset when it was built for the same parameters (a reset re-seeds the draw from the
        request's seed and clears the penalty history), else a new one. Where llama.cpp cannot
        offload the chain, the request samples on the host with it."""
        cut = req.backend in HOST_DRAWN
        key = ("cut",) if req.backend == "cut" else chain_key(req.params, cut_only=cut)
        if slot.chain and slot.chain_key == key:
            llama_cpp.llama_sampler_reset(slot.chain)
        else:
            self._detach_sampler(slot)
            chain = (
                self.cutter.new_chain()
                if req.backend == "cut"
                else build_chain(req.params, self.model.vocab, self.n_vocab, cut_only=cut)
            )
            if not llama_cpp.llama_set_sampler(self.ctx, slot.seq, chain):
                logger.debug("request %s: chain not offloaded; sampling on the host", req.id)
                if cut:  # its RowSampler draws from the copied logits instead
                    free_chain(chain)
                    req.backend = ""
                else:
                    req.chain = chain
                return
            slot.chain, slot.chain_key = chain, key
        req.chain = slot.chain
        req.attached = slot.seq

    def _detach_sampler(self, slot: Slot) -> None:
        if not slot.chain:
            return
        llama_cpp.llama_set_sampler(self.ctx, slot.seq, None)
        # a decode still in flight (pipelined) may use the chain's device tensors
        llama_cpp.llama_synchronize(self.ctx)
        free_chain(slot.chain)
        slot.chain, slot.chain_key = 0, None

    def _detach_idle(self, idle_for: float) -> None:
        """Detach the chains of slots idle for ``idle_for`` seconds: an attached chain works on
        a placeholder row in every step, so it is kept only while a next request is likely."""
        now = time.perf_counter()
        for s in self.slots:
            if s.chain and s.req is None and now - s.last_used >= idle_for:
                self._detach_sampler(s)

    def _sample_cut(self, slots: list[Slot], now: float) -> None:
        """Draw for the sequences whose rows the graph cut (backend sampling): read the
        candidates, then one vectorised draw per mode over all of its rows."""
        graph = [s for s in slots if s.req.backend == "cut"]  # type: ignore[union-attr]
        own = [s for s in slots if s.req.backend != "cut"]  # type: ignore[union-attr]
        drawn: list[tuple[Slot, int]] = []
        try:
            for group in (graph, own):
                if group:
                    values, tokens = read_candidates(
                        self.ctx,
                        [s.out_idx for s in group],
                        graph_cut.K if group is graph else None,
                    )
                    samplers = [s.req.sampler for s in group]  # type: ignore[union-attr]
                    # the shared cut saw no bias: the host adds it to the candidates
                    toks = draw_candidates(values, tokens, samplers, bias=group is graph)  # type: ignore[arg-type]
                    drawn.extend(zip(group, toks, strict=True))
        except Exception as exc:  # the step's backend-cut requests fail; the others go on
            self._fail_all(slots, exc)
            return
        for s, tok in drawn:
            req = s.req
            assert req is not None
            if req.backend == "top-k":
                llama_cpp.llama_sampler_accept(req.chain, tok)  # the graph's penalty history
            self._sample(s, req, tok, now)

    def _sample(self, s: Slot, req: Request, tok: int, now: float) -> None:
        raise NotImplementedError  # the scheduler's

    def _fail_all(self, slots: list[Slot], exc: Exception) -> None:
        raise NotImplementedError
