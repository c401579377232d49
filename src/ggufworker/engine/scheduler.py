"""The scheduler thread: continuous batching over one llama_context.

Each step is one ``llama_decode`` over a mixed batch: one token for every running sequence
plus prompt chunks of newly admitted requests (chunked prefill), then one sample per sequence
that produced logits. Requests join and leave between steps. Every slot owns one sequence id of
the unified KV cache and remembers which tokens its KV holds, so a new request whose prompt
starts with the same tokens reuses them (prefix reuse, as llama-server's slots do).

Pipelining (on when layers run on a GPU): ``llama_decode`` only queues the work on the GPU and
returns; the logits are waited for when they are read. So a step first launches the next
decode with the tokens just sampled, then turns the previous step's tokens into text, stop
checks and events while the GPU computes, and only then reads the logits. A sequence whose stop
string is found that way has one more token in flight; it is decoded and dropped (its KV is
still a correct continuation, kept for prefix reuse). On the CPU ``llama_decode`` computes
before it returns, so there is nothing to overlap and each token's event is made at once.

Sampling per step: greedy rows are an argmax over the copied logits; sampled grammar-free rows
are drawn together in numpy (engine/batch_sampling.py), from the copied logits or, with backend
sampling, from the top-k the graph cut each row to (engine/backend_sampling.py); the rest run
their llama.cpp chain.

Recurrent and hybrid models (``Model.memory`` is ``"recurrent"`` or ``"hybrid"``) keep a
fixed-size state per sequence that has consumed every token of the slot's cache; llama.cpp
cannot cut it back to an earlier position (``seq_rm`` of a partial range returns false). For
them prefix reuse is "extend or restart": a slot's state is kept only when the new prompt starts
with exactly the tokens it has consumed (and is longer); otherwise the sequence is cleared and
the prompt runs from its first token. Pure recurrent models hold no KV cells, so the cell
accounting (engine/admission.py) only limits each sequence to ``n_ctx`` positions.

Prompt cache (engine/cache_tiers.py): a slot's state is stashed in host RAM (and on disk) when
the slot goes to another prompt, and restored when its conversation comes back; for memory that
cannot be cut back (sliding window, recurrent state) a prefill stops at the positions of its
checkpoint plan, and the step after it snapshots the partial state.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.backend_sampling import CHAIN_IDLE_S, HOST_DRAWN
from ggufworker.engine.batch import Batch
from ggufworker.engine.batch_sampling import sample_rows
from ggufworker.engine.graph_cut import GraphCut
from ggufworker.engine.handle import RequestHandle, deliver_many
from ggufworker.engine.lora_slots import LoraSlots
from ggufworker.engine.model import Model
from ggufworker.engine.prompt_cache import PromptCacheOptions
from ggufworker.engine.sampling import biased_argmax, free_chain, logprobs_of
from ggufworker.engine.slots import Request, Slot
from ggufworker.engine.spec_slots import SpecSlots
from ggufworker.engine.speculation import SpeculationOptions
from ggufworker.engine.speculation_draft import DraftModel
from ggufworker.engine.threads import ThreadTuner
from ggufworker.engine.types import TokenEvent, Usage
from ggufworker.errors import EngineClosedError, GenerationError

logger = logging.getLogger(__name__)


class Scheduler(LoraSlots, SpecSlots):
    """Owns the llama_context; runs in its own thread; talk to it through :meth:`post`."""

    def __init__(
        self,
        model: Model,
        ctx: llama_cpp.llama_context_p,
        *,
        n_parallel: int,
        n_batch: int,
        on_finish: Callable[[int, int, int], None],
        pipeline: bool = False,
        tuner: ThreadTuner | None = None,
        prompt_cache: PromptCacheOptions | None = None,
        model_id: str | None = None,
        layout: str = "unified",
        speculation: SpeculationOptions | None = None,
        draft: DraftModel | None = None,
    ) -> None:
        self.model = model
        # Follows the CPU time really available (engine/threads.py); None: fixed threads.
        self.tuner = tuner
        self.ctx = ctx
        self.mem = llama_cpp.llama_get_memory(ctx)
        # positions one sequence can hold: the shared pool, or its own stream (per-slot layout)
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(ctx))
        shared = self.n_ctx == int(llama_cpp.llama_n_ctx(ctx))
        self.n_batch = n_batch
        self.slots = [Slot(seq=i) for i in range(n_parallel)]
        self.pipeline = pipeline
        self.batch = Batch(n_batch)
        self.waiting: deque[Request] = deque()
        self.inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self.eog = frozenset(model.eog_ids())
        # Fixed-size per-sequence state: reuse only by extension (see the module docstring).
        self.state_memory = model.memory != "kv"
        # Whether sequences take KV cells of the shared cache (not so for pure recurrent models).
        # (per-slot streams: each sequence has its own cells, limited to n_ctx positions)
        self.kv_cells = model.memory != "recurrent" and shared
        self.n_vocab = model.n_vocab
        self.cutter = GraphCut(self.n_vocab)  # backend sampling's shared top-k cut
        self._on_finish = on_finish  # (prompt, generated, cached tokens) for engine stats
        self._out: list[tuple[RequestHandle, object]] = []  # this step's events, sent together
        self._n_out = 0
        self._closed = False
        self._batch_slots: list[Slot] = []  # the slots of this step's batch (one adapter set)
        self._init_lora_slots()
        self._init_prompt_cache(
            prompt_cache or PromptCacheOptions(), model_id=model_id, layout=layout
        )
        self._init_speculation(speculation or SpeculationOptions(), draft)
        self.thread = threading.Thread(target=self._run, name="ggufworker-scheduler", daemon=True)

    # --- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def post(self, *msg: object) -> None:
        """Send a message to the scheduler thread (thread-safe)."""
        self.inbox.put(msg)

    def _active(self) -> list[Slot]:
        """Slots with a request, in sequence-id order (the batch order)."""
        return [s for s in self.slots if s.req is not None]

    def _handle_msg(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "submit":
            self.waiting.append(msg[1])
        elif kind == "cancel":
            self._cancel(msg[1])
        elif kind == "call":  # run a function on this thread (embeddings), result to a future
            fn, fut = msg[1], msg[2]
            self.use_lora(())  # other work on this context (embeddings) runs on the base
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
        elif kind == "close":
            self._closed = True

    def _cancel(self, rid: str) -> None:
        for req in self.waiting:
            if req.id == rid:
                self.waiting.remove(req)
                self._retire(req, 0, 0)
                req.handle._end()
                return
        for slot in self.slots:
            if slot.req is not None and slot.req.id == rid:
                logger.debug("request %s cancelled in slot %d", rid, slot.seq)
                req = slot.req
                self._release(slot)
                req.handle._end()
                return

    # --- main loop -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closed:
                idle = not self.waiting and not self._active()
                if idle:
                    self._flush()
                    try:
                        msg = self.inbox.get(timeout=CHAIN_IDLE_S)
                    except queue.Empty:
                        self._detach_idle(0.0)
                        msg = self.inbox.get()
                    self._handle_msg(msg)
                while True:
                    try:
                        self._handle_msg(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                if self._closed:
                    break
                self._admit()
                self._detach_idle(CHAIN_IDLE_S)
                if self._build_batch():
                    self._step()
                else:
                    self._flush()
        except BaseException:  # a bug here must not leave callers waiting forever
            logger.exception("scheduler thread crashed")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._flush()
        try:  # the disk tier keeps what the slots and the RAM tier hold for the next start
            self.persist_all()
        except Exception:
            logger.exception("prompt cache: could not write the states to disk")
        err = EngineClosedError("the engine was shut down")
        while True:
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                break
            if msg[0] == "submit":
                self.waiting.append(msg[1])
            elif msg[0] == "call":
                msg[2].set_exception(err)
        for req in self.waiting:
            free_chain(req.chain)
            req.handle._deliver(err)
        self.waiting.clear()
        for slot in self.slots:
            if slot.req is not None:
                req = slot.req
                self._release(slot)
                req.handle._deliver(err)
            self._detach_sampler(slot)

    # --- one step --------------------------------------------------------------------------

    def _build_batch(self) -> bool:
        batch = self.batch
        batch.clear()
        active = self._turn(self._active())  # one LoRA adapter set per step (engine/lora.py)
        decoding = [s for s in active if s.next_token >= 0]
        free_cells = self.n_ctx - self._used_cells()
        # Out of KV cells: running sequences have hit the shared context end.
        while decoding and free_cells < len(decoding):
            self._evict_idle(len(decoding))
            free_cells = self.n_ctx - self._used_cells()
            if free_cells >= len(decoding):
                break
            victim = max(decoding, key=lambda s: len(s.cache))
            decoding.remove(victim)
            if victim.pending is not None:
                self._emit(victim)  # its last sampled token first (may end it on a stop)
            if victim.req is not None:
                self._finish(victim, "length", "", None)
        prefilling = [s for s in active if s.req is not None and s.next_token < 0]
        # one token per decoding slot (and its drafts, engine/spec_slots.py)
        n_out, n_draft = self._add_decoding(decoding, prefilling, free_cells)
        budget = min(self.n_batch - batch.n, free_cells - len(decoding) - n_draft)
        prefilling.sort(key=lambda s: s.req.t_submit)  # type: ignore[union-attr]
        for s in prefilling:
            s.out_idx = -1
            s.n_fed = 0
            if budget <= 0:
                continue
            toks = s.req.tokens  # type: ignore[union-attr]
            end = min(len(toks), s.prefill_pos + budget)
            if s.ckpt_plan:  # stop where a checkpoint is due (it is taken after the decode)
                end = min(end, s.ckpt_plan[0])
            chunk = toks[s.prefill_pos : end]
            idx = batch.add_span(chunk, len(s.cache), s.seq, end == len(toks))
            if end == len(toks):
                s.out_idx = idx
                s.out_row = n_out
                n_out += 1
            s.n_fed = len(chunk)
            budget -= len(chunk)
        self._n_out = n_out
        return batch.n > 0

    def _flush(self) -> None:
        if self._out:
            deliver_many(self._out)
            self._out = []

    def _step(self) -> None:
        batch = self.batch
        if not self.pipeline:
            # Hand over the previous step's events just before decoding: consumers then run
            # while llama_decode has released the GIL, instead of competing for it.
            self._flush()
        t0 = time.perf_counter()
        rc = batch.decode(self.ctx)
        if rc != 0:
            self._decode_failed(rc)
            return
        took = time.perf_counter() - t0
        active = self._batch_slots
        decode_only = True
        for s in active:
            # Record what this step put in the KV cache for this sequence.
            if s.next_token >= 0:
                s.cache.append(s.next_token)
            else:
                decode_only = False
                n_fed = s.n_fed
                s.cache.extend(s.req.tokens[s.prefill_pos : s.prefill_pos + n_fed])  # type: ignore[union-attr]
                s.prefill_pos += n_fed
                if s.ckpt_plan and s.ckpt_plan[0] <= s.prefill_pos:
                    del s.ckpt_plan[0]
                    self._take_checkpoint(s)
        if self.tuner is not None:  # keyed by tokens: drafts make steps of one size differ
            self._tune_threads(took, batch.n if decode_only else len(active), decode_only)
        if decode_only:
            self._observe_step(batch.n, took)
        if self.pipeline:
            # The GPU is computing this step: make the previous step's events meanwhile.
            self._emit_pending(active)
            self._flush()
        now = time.perf_counter()
        logits: np.ndarray | None = None
        batched: list[Slot] = []
        cut: list[Slot] = []
        spec: list[Slot] = []
        for s in active:
            if s.draft:  # verified below (also when its request just ended: cells to remove)
                spec.append(s)
                continue
            req = s.req
            if req is None or s.out_idx < 0:
                continue
            if req.attached >= 0 and req.backend in HOST_DRAWN:
                cut.append(s)
                continue
            if req.sampler is not None:
                batched.append(s)
                continue
            try:
                if req.greedy:
                    if logits is None:
                        # All of this step's outputs in one view, rows in batch order (reading
                        # them waits for the decode to finish).
                        logits = np.ctypeslib.as_array(
                            llama_cpp.llama_get_logits(self.ctx), shape=(self._n_out, self.n_vocab)
                        )
                    if req.bias is None:
                        tok = int(logits[s.out_row].argmax())
                    else:
                        tok = biased_argmax(logits[s.out_row], *req.bias)
                else:
                    tok = int(llama_cpp.llama_sampler_sample(req.chain, self.ctx, s.out_idx))
                self._sample(s, req, tok, now)
            except Exception as exc:  # one sequence's failure ends only that request
                logger.exception("request %s failed", req.id)
                self._release(s)
                req.handle._deliver(GenerationError(f"generation failed: {exc}"))
        if batched:
            self._sample_batched(batched, logits, now)
        if cut:
            self._sample_cut(cut, now)
        if spec:
            self._verify(spec, logits, now)
        if not self.pipeline:
            self._emit_pending(active)

    def _tune_threads(self, seconds: float, n_seqs: int, decode_only: bool) -> None:
        tuner = self.tuner
        assert tuner is not None
        before = tuner.in_use
        n = tuner.observe(seconds, n_seqs, decode_only)
        if n != before:
            llama_cpp.llama_set_n_threads(self.ctx, n, n)

    def _sample_batched(self, slots: list[Slot], logits: np.ndarray | None, now: float) -> None:
        """Draw the tokens of every sampled (grammar-free) sequence of the step at once."""
        if logits is None:
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits(self.ctx), shape=(self._n_out, self.n_vocab)
            )
        samplers = [s.req.sampler for s in slots]  # type: ignore[union-attr]
        try:
            toks = sample_rows(logits, [s.out_row for s in slots], samplers)  # type: ignore[arg-type]
        except Exception as exc:  # the step's sampled requests fail; greedy ones go on
            self._fail_all(slots, exc)
            return
        for s, tok in zip(slots, toks, strict=True):
            req = s.req
            assert req is not None and req.sampler is not None
            req.sampler.accept(tok)
            self._sample(s, req, tok, now)

    def _fail_all(self, slots: list[Slot], exc: Exception) -> None:
        logger.exception("sampling failed")
        for s in slots:
            req = s.req
            assert req is not None
            self._release(s)
            req.handle._deliver(GenerationError(f"generation failed: {exc}"))

    def _decode_failed(self, rc: int) -> None:
        logger.error("llama_decode returned %d for a batch of %d tokens", rc, self.batch.n)
        err = GenerationError(f"llama_decode failed (code {rc})")
        for s in self._batch_slots:
            if s.out_idx >= 0 or s.next_token < 0:
                req = s.req
                assert req is not None
                self._release(s)
                self._drop_kv(s)
                req.handle._deliver(err)

    def _sample(self, s: Slot, req: Request, tok: int, now: float) -> None:
        """Take a sampled token: end the request (end of generation, length) or queue it to
        be decoded next and its event to be made by :meth:`_emit`."""
        params = req.params
        if req.budget is not None:
            tok, closed = req.budget.step(tok)
            if closed:  # the chain accepted what it drew, not the end marker written instead
                req.budget.resync(req.chain)
        s.n_gen += 1
        lp: float | None = None
        top: tuple = ()
        if params.logprobs is not None:  # from this step's logits: read them now
            ptr = llama_cpp.llama_get_logits_ith(self.ctx, s.out_idx)
            lp, top = logprobs_of(ptr, self.n_vocab, tok, params.logprobs, self._piece_text)
        stream = s.stream
        assert stream is not None
        if tok in self.eog and not params.ignore_eos:
            self._finish(s, "stop", stream.flush(), None, now)
            return
        if (params.max_tokens is not None and s.n_gen >= params.max_tokens) or (
            len(s.cache) + 1 >= self.n_ctx
        ):
            text = stream.push(self.model.piece(tok, special=params.render_special))
            if not stream.stopped:
                text += stream.flush()
            self._finish(s, "stop" if stream.stopped else "length", text, tok, now, lp, top)
            return
        s.next_token = tok
        s.pending = (tok, lp, top, now)

    def _emit_pending(self, slots: list[Slot]) -> None:
        for s in slots:
            if s.pending is not None and s.req is not None:
                self._emit(s)

    def _emit(self, s: Slot) -> None:
        """Turn the slot's sampled token into text and an event; end the request on a stop
        string (in pipelined mode the token decoding meanwhile is dropped)."""
        tok, lp, top, now = s.pending  # type: ignore[misc]
        s.pending = None
        req = s.req
        stream = s.stream
        assert req is not None and stream is not None
        text = stream.push(self.model.piece(tok, special=req.params.render_special))
        if stream.stopped:
            self._finish(s, "stop", text, tok, now, lp, top)
            return
        ttft = None
        if s.first_event:
            s.first_event = False
            ttft = now - req.t_submit
        self._out.append((req.handle, TokenEvent(text, tok, lp, top, None, None, ttft)))

    def _piece_text(self, tok: int) -> str:
        return self.model.piece(tok).decode("utf-8", errors="replace")

    def _finish(
        self,
        s: Slot,
        reason: str,
        text: str,
        tok: int | None,
        now: float | None = None,
        lp: float | None = None,
        top: tuple = (),
    ) -> None:
        req = s.req
        assert req is not None
        usage = Usage(len(req.tokens), s.n_gen, s.n_cached)
        ttft = None
        if s.first_event:
            ttft = (now or time.perf_counter()) - req.t_submit
        matched = s.stream.matched if s.stream is not None and reason == "stop" else None
        self._release(s)
        event = TokenEvent(text, tok, lp, top, reason, usage, ttft, matched)  # type: ignore[arg-type]
        self._out.append((req.handle, event))

    def _release(self, s: Slot) -> None:
        req = s.req
        if req is None:
            return
        if s.n_gen > 0:
            self._turn_checkpoint(s)
        s.ckpt_plan = []
        self._retire(req, len(req.tokens), s.n_gen, s.n_cached)
        s.req = None
        s.next_token = -1
        s.out_idx = -1
        s.pending = None
        s.stream = None
        s.last_used = time.perf_counter()

    def _retire(self, req: Request, n_prompt: int, n_gen: int, n_cached: int = 0) -> None:
        if req.attached >= 0:  # the chain is the slot's; it stays attached for the next request
            req.attached = -1
            req.chain = 0
        free_chain(req.chain)
        req.chain = 0
        self._on_finish(n_prompt, n_gen, n_cached)
