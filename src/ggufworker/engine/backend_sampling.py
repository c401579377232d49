"""Backend sampling: sampler chains attached to sequences in llama.cpp's decode graph.

The pinned llama.cpp can run a sequence's sampler chain inside the decode graph
(``llama_set_sampler``; its samplers for logit bias, penalties, top-k, top-p, min-p,
temperature and dist have graph versions). A whole chain is ~35 graph nodes per sequence, so a
sampled request's chain stops at top-k ("top-k" mode): the graph applies the bias and penalties,
cuts the row to its top-k, and copies back only those k logits and ids; the host draws from
them for all such rows of a step at once (:func:`~ggufworker.engine.batch_sampling.draw_candidates`)
with the request's own generator, as the host sampler draws from its own top-k of the copied
logits. Requests with top-k off, or greedy with penalties, run the whole chain in the graph
("chain" mode; its ``dist`` draws the host chain's uniforms).

Attaching or detaching a chain makes llama.cpp re-plan its graph, so a slot keeps its chain for
the next request whose graph part is the same (reset: the seed and the penalty history start
again) and lets it go when it has been idle for :data:`CHAIN_IDLE_S` or a request without a
chain takes the slot (an attached chain would keep that sequence's logits in the graph).
"""

from __future__ import annotations

import ctypes
import logging
import time
from typing import Any, Literal

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.batch_sampling import draw_candidates, vectorised
from ggufworker.engine.sampling import build_chain, chain_key, free_chain
from ggufworker.engine.slots import Request, Slot
from ggufworker.engine.types import SamplingParams
from ggufworker.errors import GenerationError

logger = logging.getLogger(__name__)

#: ``on`` draws sampled requests through llama.cpp's graph, ``off`` on the host (numpy, all
#: rows of a step at once), ``auto`` on for GPU backends
BackendSampling = Literal["auto", "on", "off"]

#: seconds an idle slot keeps its backend sampler chain attached (see ``_detach_idle``)
CHAIN_IDLE_S = 0.25


def enabled(mode: str, backend: str) -> bool:
    """Whether ``mode`` puts sampling into llama.cpp's graph on this backend (``gpu`` or
    ``cpu``): ``auto`` does on GPU backends only (measured on the 2-core VM, SmolLM2, 8 sampled
    streams: 192 tok/s with it against 200 with the host sampler, single stream equal;
    docs/ENGINE.md)."""
    return mode == "on" or (mode == "auto" and backend == "gpu")


def request_mode(params: SamplingParams) -> str:
    """How a request is sampled with backend sampling on: ``top-k``, ``chain``, or ``""``
    (greedy, grammars and logprobs keep the host paths: llama.cpp does not copy back the raw
    logits of a sequence that has a backend sampler)."""
    if not vectorised(params) or params.logprobs is not None:
        return ""
    return "top-k" if params.temperature > 0 and params.top_k > 0 else "chain"


def _view(ptr: Any, ctype: Any, n: int) -> np.ndarray:
    """``n`` values at a C pointer as a numpy array, without a copy (``np.ctypeslib.as_array``
    builds a new ctypes type per call: ~60 us against ~2 us for this)."""
    addr = ctypes.cast(ptr, ctypes.c_void_p).value
    if not addr:
        raise GenerationError("llama.cpp returned no sampled candidates")
    return np.frombuffer((ctype * n).from_address(addr), dtype=ctype)


class AttachedChains:
    """Chains attached to the slots' sequences, mixed into the scheduler (scheduler thread
    only)."""

    ctx: Any
    model: Any
    n_vocab: int
    slots: list[Slot]

    def _attach_sampler(self, slot: Slot, req: Request) -> None:
        """Give a backend-sampled request the slot's chain in llama.cpp's graph: the attached
        one reset when it was built for the same parameters (a reset re-seeds the draw from the
        request's seed and clears the penalty history), else a new one. Where llama.cpp cannot
        offload the chain, the request samples on the host with it."""
        cut = req.backend == "top-k"
        key = chain_key(req.params, cut_only=cut)
        if slot.chain and slot.chain_key == key:
            llama_cpp.llama_sampler_reset(slot.chain)
        else:
            self._detach_sampler(slot)
            chain = build_chain(req.params, self.model.vocab, self.n_vocab, cut_only=cut)
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
        """Draw for the sequences whose rows the graph cut to their top-k (backend sampling):
        read each row's candidates, then one vectorised draw over all of them."""
        ctx = self.ctx
        try:
            rows = []
            for s in slots:
                i = s.out_idx
                n = int(llama_cpp.llama_get_sampled_candidates_count_ith(ctx, i))
                vals = _view(llama_cpp.llama_get_sampled_logits_ith(ctx, i), ctypes.c_float, n)
                ids = _view(llama_cpp.llama_get_sampled_candidates_ith(ctx, i), ctypes.c_int32, n)
                rows.append((vals, ids))
            width = max(len(v) for v, _ in rows)
            values = np.full((len(rows), width), -np.inf, dtype=np.float32)
            tokens = np.zeros((len(rows), width), dtype=np.int32)
            for j, (vals, ids) in enumerate(rows):
                values[j, : len(vals)] = vals
                tokens[j, : len(ids)] = ids
            toks = draw_candidates(values, tokens, [s.req.sampler for s in slots])  # type: ignore[misc, union-attr]
        except Exception as exc:  # the step's backend-cut requests fail; the others go on
            self._fail_all(slots, exc)
            return
        for s, tok in zip(slots, toks, strict=True):
            req = s.req
            assert req is not None
            llama_cpp.llama_sampler_accept(req.chain, tok)  # the graph's penalty history
            self._sample(s, req, tok, now)

    def _sample(self, s: Slot, req: Request, tok: int, now: float) -> None:
        raise NotImplementedError  # the scheduler's

    def _fail_all(self, slots: list[Slot], exc: Exception) -> None:
        raise NotImplementedError
