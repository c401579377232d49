"""The public engine: load a GGUF, submit requests, stream tokens.

One scheduler thread owns the llama_context (see :mod:`ggufworker.engine.scheduler`); every
public method here is safe to call from any thread and never holds a lock across a generation.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.backend_sampling import (
    AUTO_MIN_ROWS,
    HOST_DRAWN,
    BackendSampling,
    request_mode,
)
from ggufworker.engine.backend_sampling import enabled as backend_enabled
from ggufworker.engine.batch_sampling import RowSampler, vectorised
from ggufworker.engine.budget import thinking_budget
from ggufworker.engine.cache_tiers import layout_key
from ggufworker.engine.chat import TextHelpers
from ggufworker.engine.devices import SplitMode
from ggufworker.engine.embedding import Embedding
from ggufworker.engine.handle import Completion, EngineStats, RequestHandle
from ggufworker.engine.kv_layout import KvLayout
from ggufworker.engine.kv_layout import resolve as kv_resolve
from ggufworker.engine.lora import LoraAdapters
from ggufworker.engine.model import ContextOptions, Model, check_cache_types
from ggufworker.engine.prompt_cache import PromptCacheOptions
from ggufworker.engine.sampling import bias_arrays, build_chain, is_plain_greedy, validate
from ggufworker.engine.scheduler import Request, Scheduler
from ggufworker.engine.slot_cache import SlotCache
from ggufworker.engine.speculation import SpeculationOptions
from ggufworker.engine.speculation_draft import DraftModel
from ggufworker.engine.state_files import (
    model_digest,
)
from ggufworker.engine.threads import ForeignLoad, ThreadTuner, available_cpus
from ggufworker.engine.types import GenerationRequest, ModelInfo
from ggufworker.errors import (
    ContextLengthExceededError,
    EngineClosedError,
    InvalidRequestError,
    QueueFullError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Engine(SlotCache, Embedding, LoraAdapters, TextHelpers):
    """A loaded model serving many requests at once through continuous batching."""

    def __init__(
        self,
        model: Model,
        opts: ContextOptions,
        *,
        name: str,
        max_queue: int,
        pipeline: bool | None = None,
        prompt_cache: PromptCacheOptions | None = None,
        speculation: SpeculationOptions | None = None,
        backend_min_rows: int = 1,
    ) -> None:
        self._model = model
        self._vocab = model  # the text helpers' vocabulary (engine/chat.py)
        self._opts = opts
        cache_opts = prompt_cache or PromptCacheOptions()
        # what saved states are checked against: the model file and the memory layout
        self._digest = model_digest(model.path) if cache_opts.disk_dir is not None else None
        n_seq = opts.n_parallel + opts.n_embed_seqs
        self._layout = layout_key(
            unified=opts.kv_unified,
            n_seq=n_seq,
            cache_types=(opts.cache_type_k, opts.cache_type_v),
        )
        spec = speculation or SpeculationOptions()
        self._draft = (
            DraftModel(spec.draft_model, model, opts)
            if spec.mode == "draft" and spec.draft_model
            else None
        )
        try:
            self._ctx = model.new_context(opts)
        except BaseException:
            if self._draft is not None:
                self._draft.close()
            raise
        # the context one sequence can use (the whole pool, or its own stream)
        n_ctx = int(llama_cpp.llama_n_ctx_seq(self._ctx))
        self.info: ModelInfo = model.info(name=name, n_ctx=n_ctx, n_parallel=opts.n_parallel)
        self.max_queue = max_queue
        #: sample (non-greedy, grammar-free) requests together in numpy; False: one llama.cpp
        #: sampler chain per request, as before (kept for comparisons)
        self.batched_sampling = True
        self._lock = threading.Lock()
        self._outstanding = 0  # submitted and not finished (running or queued)
        self._closed = False
        self._totals = [0, 0, 0, 0]  # prompt, generated, cached, requests
        self._sched = Scheduler(
            model,
            self._ctx,
            n_parallel=opts.n_parallel,
            n_batch=opts.n_batch,
            on_finish=self._on_finish,
            pipeline=model.backend == "gpu" if pipeline is None else pipeline,
            tuner=self._thread_tuner(model, opts),
            prompt_cache=cache_opts,
            model_id=self._digest,
            layout=self._layout,
            speculation=spec,
            draft=self._draft,
        )
        # fewest sampled requests together worth a chain in the graph (engine/backend_sampling.py)
        self._sched.min_rows = backend_min_rows
        self._init_embedding()
        self._init_lora()
        self._sched.start()

    @staticmethod
    def _thread_tuner(model: Model, opts: ContextOptions) -> ThreadTuner | None:
        """A tuner when llama.cpp computes on the CPU with a thread count we chose."""
        if opts.n_threads or model.backend == "gpu":
            return None
        return ThreadTuner(available_cpus(), foreign=ForeignLoad())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        n_ctx: int = 4096,
        n_parallel: int = 4,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int | None = None,
        flash_attn: bool | None = None,
        use_mmap: bool = True,
        embedding: bool = False,
        embed_seqs: int = 1,
        max_queue: int = 64,
        kv_unified: bool | None = None,
        swa_full: bool = True,
        kv_layout: KvLayout = "auto",
        pipeline: bool | None = None,
        split_mode: SplitMode | None = None,
        main_gpu: int | None = None,
        tensor_split: Sequence[float] | None = None,
        backend_sampling: BackendSampling = "auto",
        prompt_cache: PromptCacheOptions | None = None,
        cache_type_k: str = "f16",
        cache_type_v: str = "f16",
        rpc_servers: Sequence[str] = (),
        speculation: SpeculationOptions | None = None,
    ) -> Engine:
        """Load a GGUF file and start its scheduler thread.

        Args:
            path: the .gguf file.
            name: the name requests use for it (default: the file stem).
            n_ctx: KV cache size in tokens, shared by all sequences (unified cache).
            n_parallel: sequences decoded together (slots).
            n_threads: CPU threads (default: all cores).
            n_batch: most tokens per decode step (prompt chunks + one per running sequence).
            n_gpu_layers: layers to offload; None offloads all when a GPU backend exists.
            flash_attn: None lets llama.cpp decide.
            use_mmap: memory-map the weights.
            embedding: also allow :meth:`embed` (pooled sentence embeddings).
            embed_seqs: with ``embedding``, how many inputs one embedding decode may hold
                (sequence ids after the slots; see :mod:`ggufworker.engine.embedding`).
            max_queue: requests that may wait for a free slot before :class:`QueueFullError`.
            kv_unified, swa_full: llama.cpp KV cache layout (see docs/ENGINE.md); an explicit
                ``kv_unified`` overrides ``kv_layout``.
            kv_layout: ``auto``, ``unified`` (one pool of ``n_ctx`` shared by the slots) or
                ``per-slot`` (a stream of ``n_ctx`` per slot: output independent of other
                traffic), see :mod:`ggufworker.engine.kv_layout`.
            pipeline: make each step's token events while the next decode runs on the GPU
                (see :mod:`ggufworker.engine.scheduler`); None: on when layers are offloaded.
            split_mode, main_gpu, tensor_split: how the weights are spread over several GPUs
                (see :mod:`ggufworker.engine.devices`); None keeps llama.cpp's defaults.
            backend_sampling: ``on`` draws sampled, grammar-free requests inside llama.cpp's
                graph (on the GPU with the model; no full logits copied back), ``off`` on the
                host in numpy, ``auto`` (default) on when layers run on a GPU, except for a
                request that would be the only sampled one running (drawn on the host: no
                graph re-plan for it). Not with ``embedding``.
            prompt_cache: the prompt cache's RAM and disk tiers, checkpoints and slot reuse
                threshold (default: :class:`PromptCacheOptions`' defaults, see
                :mod:`ggufworker.engine.prompt_cache`).
            cache_type_k, cache_type_v: the KV cache's element types (``f16`` default, ``f32``,
                ``bf16``, ``q8_0``, ``q5_1``, ``q5_0``, ``q4_1``, ``q4_0``, ``iq4_nl``); a
                quantized V cache needs flash attention (an error with ``flash_attn=False``).
            speculation: speculative decoding (n-gram prompt lookup or a draft model, see
                :mod:`ggufworker.engine.speculation`); None: off.
            rpc_servers: ``host:port`` of llama.cpp RPC workers whose devices take the
                offloaded layers (before local GPUs; see :mod:`ggufworker.engine.rpc`). A
                worker that goes away aborts the process: run such an engine in a child
                process (:mod:`ggufworker.engine.child`).

        Raises:
            ModelLoadError: the file is missing or llama.cpp cannot load it.
            InvalidRequestError: a GPU option names GPUs that are not there.
        """
        if n_parallel < 1 or n_ctx < 8 or n_batch < n_parallel:
            raise InvalidRequestError("need n_parallel >= 1, n_ctx >= 8 and n_batch >= n_parallel")
        check_cache_types(cache_type_k, cache_type_v, flash_attn=flash_attn)
        embed_seqs = max(1, embed_seqs) if embedding else 0
        spec = speculation or SpeculationOptions()
        if spec.mode == "draft" and not spec.draft_model:
            raise InvalidRequestError("draft speculation needs a draft model", param="draft_model")
        if n_parallel + embed_seqs > 256:  # llama.cpp's LLAMA_MAX_SEQ
            raise InvalidRequestError("n_parallel plus embed_seqs must be at most 256")
        if backend_sampling not in ("auto", "on", "off"):
            raise InvalidRequestError(
                f"backend_sampling must be auto, on or off, not {backend_sampling!r}",
                param="backend_sampling",
            )
        model = Model(
            path,
            n_gpu_layers=n_gpu_layers,
            use_mmap=use_mmap,
            split_mode=split_mode,
            main_gpu=main_gpu,
            tensor_split=tensor_split,
            rpc_servers=rpc_servers,
        )
        if kv_unified is None and embed_seqs > 1:
            # llama.cpp splits a batch over per-sequence KV streams into equal-length
            # micro-batches, which cuts inputs of different lengths apart and pools each part
            # alone; one unified stream keeps every input whole
            kv_unified = True
        if kv_unified is None:
            try:
                kv_unified = kv_resolve(
                    kv_layout, model, n_ctx=n_ctx, n_seq=n_parallel + embed_seqs
                )
            except ValueError as exc:
                model.close()
                raise InvalidRequestError(str(exc), param="kv_layout") from None
        opts = ContextOptions(
            n_ctx=n_ctx,
            n_parallel=n_parallel,
            n_threads=n_threads,
            n_batch=n_batch,
            flash_attn=flash_attn,
            embedding=embedding,
            n_embed_seqs=embed_seqs,
            kv_unified=kv_unified,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            swa_full=swa_full,
            backend_sampling=not embedding and backend_enabled(backend_sampling, model.backend),
            rows_per_seq=1 + spec.n_max if spec.enabled else 1,
        )
        try:
            return cls(
                model,
                opts,
                name=name or model.path.stem,
                max_queue=max_queue,
                pipeline=pipeline,
                prompt_cache=prompt_cache,
                speculation=spec,
                backend_min_rows=AUTO_MIN_ROWS if backend_sampling == "auto" else 1,
            )
        except BaseException:
            model.close()
            raise

    # --- requests ----------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a generation and return its stream handle at once.

        Raises:
            InvalidRequestError: bad sampling parameters, grammar or token ids.
            ContextLengthExceededError: the prompt leaves no room to generate.
            QueueFullError: every slot is busy and the queue is full.
            EngineClosedError: the engine was closed.
        """
        if self._closed:
            raise EngineClosedError("the engine is closed")
        if not self._sched.thread.is_alive():  # crashed: nobody would ever answer
            raise EngineClosedError("the engine's scheduler thread stopped (see the log)")
        tokens = self._prompt_tokens(request)
        n_ctx = self.info.n_ctx
        if len(tokens) >= n_ctx:
            raise ContextLengthExceededError(
                f"the prompt is {len(tokens)} tokens; this model's context is {n_ctx} tokens "
                "and at least one must be left to generate"
            )
        validate(request.params, self._model.n_vocab)
        lora_key = self.lora_key(request.lora)
        with self._lock:
            if self._outstanding >= self._opts.n_parallel + self.max_queue:
                raise QueueFullError(
                    f"all {self._opts.n_parallel} slots are busy and {self.max_queue} requests "
                    "are already waiting"
                )
            self._outstanding += 1
        params = request.params
        greedy = is_plain_greedy(params)
        # a thinking budget writes tokens in place of sampled ones: the host must see each
        backend = (
            ""
            if greedy or not self._opts.backend_sampling or params.reasoning_budget is not None
            else request_mode(params, self._model.n_vocab)
        )
        # a RowSampler draws on the host: from the graph's top-k, or from the copied logits
        host_draw = not greedy and not backend and self.batched_sampling and vectorised(params)
        sampler = RowSampler(params) if backend in HOST_DRAWN or host_draw else None
        # drafts are verified for tokens chosen on the host from the step's rows
        speculative = (
            params.speculative
            and (greedy or host_draw)
            and params.logprobs is None
            and params.reasoning_budget is None
        )
        try:
            # (a backend-sampled request gets its slot's chain at admission)
            chain = (
                0
                if greedy or sampler is not None or backend
                else build_chain(request.params, self._model.vocab, self._model.n_vocab)
            )
        except BaseException:
            with self._lock:
                self._outstanding -= 1
            raise
        rid = request.request_id or f"req-{uuid.uuid4().hex[:16]}"
        handle = RequestHandle(rid, len(tokens), self._cancel)
        self._sched.post(
            "submit",
            Request(
                rid,
                tokens,
                request.params,
                chain,
                handle,
                greedy=greedy,
                bias=bias_arrays(request.params) if greedy else None,
                sampler=sampler,
                backend=backend,
                budget=thinking_budget(params.reasoning_budget, self._model),
                lora_key=lora_key,
                speculative=speculative,
            ),
        )
        if self._closed:  # closed while we were queuing: the scheduler may never see it
            handle._deliver(EngineClosedError("the engine is closed"))
        return handle

    def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        if isinstance(request.prompt, str):
            tokens = self._model.tokenize(
                request.prompt, add_special=request.add_bos, parse_special=request.parse_special
            )
        else:
            tokens = [int(t) for t in request.prompt]
            n_vocab = self._model.n_vocab
            if any(not 0 <= t < n_vocab for t in tokens):
                raise InvalidRequestError(
                    f"prompt token ids must be in 0..{n_vocab - 1}", param="prompt"
                )
        if not tokens:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        return tokens

    def _cancel(self, request_id: str) -> None:
        self._sched.post("cancel", request_id)

    def _on_finish(self, n_prompt: int, n_gen: int, n_cached: int) -> None:
        with self._lock:
            self._outstanding -= 1
            t = self._totals
            t[0] += n_prompt
            t[1] += n_gen
            t[2] += n_cached
            t[3] += 1

    def generate(self, request: GenerationRequest) -> Completion:
        """Run a request to the end and return the whole completion (blocking)."""
        return self.submit(request).collect(logprobs=request.params.logprobs is not None)

    # --- embeddings --------------------------------------------------------------------------

    def run_on_scheduler(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the scheduler thread between two steps and return its result.

        For other llama.cpp work in the same process (a reference decoder, a second context):
        llama.cpp's CPU backend keeps a team of spinning OpenMP worker threads for each thread
        that computes, so computing from a second thread makes both teams compete for the
        cores (measured here: 3x slower decoding for both, see docs/ENGINE.md).
        """
        return self._call(fn)

    def _call(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise EngineClosedError("the engine is closed")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._sched.post("call", fn, fut)
        return fut.result()

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """False once the engine is closed or its scheduler thread stopped (a crash, logged)."""
        return not self._closed and self._sched.thread.is_alive()

    @property
    def kv_layout(self) -> str:
        """``unified`` (one KV pool shared by the slots) or ``per-slot`` (a stream each)."""
        return "unified" if self._opts.kv_unified else "per-slot"

    @property
    def kv_cache_type(self) -> str:
        """The KV cache's element types, ``K/V`` (``f16/f16`` unless set at load)."""
        return f"{self._opts.cache_type_k}/{self._opts.cache_type_v}"

    @property
    def sampling(self) -> str:
        """Where sampled grammar-free requests are drawn: ``backend`` (llama.cpp's graph) or
        ``host`` (numpy)."""
        return "backend" if self._opts.backend_sampling else "host"

    @property
    def pipelined(self) -> bool:
        """Whether steps overlap the event work with the next decode (GPU default)."""
        return self._sched.pipeline

    def stats(self) -> EngineStats:
        """Current load and lifetime token counts."""
        busy = self._sched.busy_slots()
        with self._lock:
            queued = max(0, self._outstanding - busy)
            t = list(self._totals)
        spec = self._sched.spec_counters
        return EngineStats(
            n_parallel=self._opts.n_parallel,
            busy_slots=busy,
            queue_depth=queued,
            max_queue=self.max_queue,
            total_prompt_tokens=t[0],
            total_generated_tokens=t[1],
            total_cached_tokens=t[2],
            total_requests=t[3],
            spec_drafts=spec.drafts,
            spec_draft_tokens=spec.draft_tokens,
            spec_accepted_tokens=spec.accepted_tokens,
            spec_accepted_per_pos=tuple(spec.accepted_per_pos),
        )

    def close(self) -> None:
        """Stop the scheduler; pending requests end with :class:`EngineClosedError`."""
        if self._closed:
            return
        self._closed = True
        self._sched.post("close")
        self._sched.thread.join()
        llama_cpp.llama_free(self._ctx)
        self._free_loras()
        self._ctx = None  # type: ignore[assignment]
        if self._draft is not None:
            self._draft.close()
        self._model.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the real API
        try:
            if not self._closed and threading.current_thread() is not self._sched.thread:
                self.close()
        except Exception:
            pass


__all__ = ["Engine"]
