"""Pooled embeddings and rerank scores, batched: the inputs of one request and of concurrent
requests go into one ``llama_decode`` as separate sequences. Mixed into
:class:`~ggufworker.engine.Engine`.

An engine loaded with ``embedding=True`` keeps ``embed_seqs`` sequence ids after its slots for
this work. A caller queues a job (its token lists) and asks the scheduler thread to drain the
queue; a drain packs the waiting inputs, oldest first, into decodes of at most ``n_batch`` tokens
and ``embed_seqs`` sequences, so requests that arrive while one decode runs share the next one.
Non-causal models (encoders) must see a whole input in one micro-batch (llama.cpp asserts it),
which is why one input may hold at most ``n_batch`` tokens.

What a vector is comes from the GGUF: ``{arch}.pooling_type`` (mean, CLS, last, or rank: a
classifier's scores instead of a vector) and ``ggufworker.embedding.normalize`` (written by the
converter from a sentence-transformers ``Normalize`` module; absent means normalised, as
llama-server does by default).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.model import ContextOptions, Model
from ggufworker.engine.scheduler import Scheduler
from ggufworker.engine.types import ModelInfo
from ggufworker.errors import ContextLengthExceededError, EngineClosedError, InvalidRequestError

#: Tokens packed into one decode. Inputs of one decode attend within their own sequence, but
#: llama.cpp computes attention over the whole micro-batch under a mask, so cost grows with the
#: square of a decode's tokens: measured on a 6-layer 384-wide cross-encoder, 64 pairs of ~150
#: tokens, 2 CPU cores, single runs: 26 pairs/s at 2048 tokens per decode, 35 at 1024, 42 at
#: 512, 37 at 256.
PACK_TOKENS = 512

#: GGUF key: whether pooled vectors are L2-normalised (a sentence-transformers Normalize module)
NORMALIZE_KEY = "ggufworker.embedding.normalize"

POOLING_NAMES = {
    llama_cpp.LLAMA_POOLING_TYPE_NONE: "none",
    llama_cpp.LLAMA_POOLING_TYPE_MEAN: "mean",
    llama_cpp.LLAMA_POOLING_TYPE_CLS: "cls",
    llama_cpp.LLAMA_POOLING_TYPE_LAST: "last",
    llama_cpp.LLAMA_POOLING_TYPE_RANK: "rank",
}


@dataclass(frozen=True)
class Pooling:
    """How an embedding engine turns a sequence into its output."""

    kind: str  # "mean", "cls", "last" or "rank"
    normalize: bool  # L2-normalise vectors (never for rank scores)
    n_out: int  # floats per sequence: the vector's size, or the classifier's outputs
    rerank_template: str | None  # the prompt a (query, document) pair becomes, if the model has one


@dataclass
class EmbedResult:
    """What one embedding or rerank call produced."""

    vectors: list[list[float]]  # one per input, in input order (rank: the classifier outputs)
    prompt_tokens: int  # tokens computed over all inputs


@dataclass
class _Job:
    inputs: list[list[int]]
    future: concurrent.futures.Future[list[list[float]]] = field(
        default_factory=concurrent.futures.Future
    )
    results: list[list[float] | None] = field(init=False)
    next: int = 0  # the first input not yet packed

    def __post_init__(self) -> None:
        self.results = [None] * len(self.inputs)


def describe_pooling(model: Model, ctx: Any) -> Pooling:
    """The pooling of an embedding context, from the context and the GGUF's metadata."""
    kind = POOLING_NAMES.get(int(llama_cpp.llama_pooling_type(ctx)), "none")
    meta = model.metadata
    if kind == "rank":
        n_out = max(1, int(llama_cpp.llama_model_n_cls_out(model.ptr)))
    else:
        n_out = int(llama_cpp.llama_model_n_embd_out(model.ptr))
    normalize = kind != "rank" and meta.get(NORMALIZE_KEY, "true").lower() not in ("false", "0")
    return Pooling(
        kind=kind,
        normalize=normalize,
        n_out=n_out,
        rerank_template=meta.get("tokenizer.chat_template.rerank"),
    )


def l2_normalized(rows: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each row scaled to unit length (a zero row stays zero)."""
    if not rows:
        return []
    arr = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return (arr / np.where(norms > 0, norms, 1.0)).tolist()  # type: ignore[no-any-return]


def _as_is(rows: list[list[float]]) -> list[list[float]]:
    return rows


class Embedding:
    """The engine's embedding and rerank methods (see the module doc)."""

    _sched: Scheduler
    _model: Model
    _opts: ContextOptions
    _ctx: Any
    info: ModelInfo
    _closed: bool

    def _init_embedding(self) -> None:
        self._embed_lock = threading.Lock()
        self._embed_queue: deque[_Job] = deque()
        #: embedding/rerank decodes run so far (inputs of several requests may share one)
        self.embed_decodes = 0
        self.pooling: Pooling | None = (
            describe_pooling(self._model, self._ctx) if self._opts.embedding else None
        )

    # --- public ------------------------------------------------------------------------------

    @property
    def max_input_tokens(self) -> int:
        """The most tokens one input may hold: one decode, within the trained context."""
        n_train = self.info.n_ctx_train or self._opts.n_batch
        return max(1, min(self._opts.n_batch, n_train))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Pooled embeddings of each text (normalised as the model says).

        Raises:
            InvalidRequestError: the engine was not loaded for embeddings.
            ContextLengthExceededError: a text is longer than :attr:`max_input_tokens`.
        """
        return self.embed_inputs(list(texts)).vectors

    def embed_inputs(
        self, inputs: Sequence[str | Sequence[int]], *, truncate: bool = False
    ) -> EmbedResult:
        """Pooled embeddings of texts or token-id lists, batched with concurrent callers
        (blocking; :meth:`submit_embeddings` returns a future instead).

        Args:
            inputs: texts (tokenized with the model's special tokens) or token ids as given.
            truncate: cut inputs longer than :attr:`max_input_tokens` (keeping the closing
                special token) instead of refusing them.

        Raises:
            InvalidRequestError: the engine was not loaded for embeddings, an input is empty
                or holds ids outside the vocabulary.
            ContextLengthExceededError: an input is too long and ``truncate`` is off.
        """
        return self.submit_embeddings(inputs, truncate=truncate).result()

    def submit_embeddings(
        self, inputs: Sequence[str | Sequence[int]], *, truncate: bool = False
    ) -> concurrent.futures.Future[EmbedResult]:
        """Queue inputs for embedding; the future completes when their decodes are done. Bad
        inputs raise here, before anything is queued (see :meth:`embed_inputs`)."""
        pooling = self._embedding_pooling()
        token_lists = [self._input_tokens(x, i, truncate) for i, x in enumerate(inputs)]

        return self._start_job(token_lists, l2_normalized if pooling.normalize else _as_is)

    def rerank(
        self, query: str, documents: Sequence[str], *, truncate: bool = False
    ) -> EmbedResult:
        """Relevance of each document to ``query``, from a rank-pooled model (a classifier on
        the pair, or a decoder reranker's yes/no head): ``vectors[i][0]`` is document i's score
        (blocking; :meth:`submit_rerank` returns a future instead).

        Raises:
            InvalidRequestError: the model is not a reranker.
            ContextLengthExceededError: a pair is too long and ``truncate`` is off.
        """
        return self.submit_rerank(query, documents, truncate=truncate).result()

    def submit_rerank(
        self, query: str, documents: Sequence[str], *, truncate: bool = False
    ) -> concurrent.futures.Future[EmbedResult]:
        """Queue (query, document) pairs for scoring (see :meth:`rerank`)."""
        pooling = self._embedding_pooling()
        if pooling.kind != "rank":
            raise InvalidRequestError(
                f"model {self.info.name!r} is not a reranker (its pooling is {pooling.kind})",
                param="model",
            )
        token_lists = [
            self._checked(self.pair_tokens(query, d), i, truncate, param="documents")
            for i, d in enumerate(documents)
        ]
        return self._start_job(token_lists, _as_is)

    def pair_tokens(self, query: str, document: str) -> list[int]:
        """The tokens a (query, document) pair becomes for a reranker: the model's rerank
        prompt when its GGUF has one (``{query}``/``{document}`` filled in), else the
        tokenizer's pair form — BOS, query, EOS (or SEP), SEP, document, EOS — by the vocab's
        add-BOS/EOS/SEP flags."""
        model = self._model
        pooling = self._embedding_pooling()
        if pooling.rerank_template:
            text = pooling.rerank_template.replace("{query}", query).replace("{document}", document)
            return model.tokenize(text, add_special=False, parse_special=True)
        vocab = model.vocab
        eos = int(llama_cpp.llama_vocab_eos(vocab))
        sep = int(llama_cpp.llama_vocab_sep(vocab))
        end = eos if eos >= 0 else sep
        out: list[int] = []
        if llama_cpp.llama_vocab_get_add_bos(vocab):
            out.append(int(llama_cpp.llama_vocab_bos(vocab)))
        out += model.tokenize(query, add_special=False)
        if llama_cpp.llama_vocab_get_add_eos(vocab) and end >= 0:
            out.append(end)
        if llama_cpp.llama_vocab_get_add_sep(vocab) and sep >= 0:
            out.append(sep)
        out += model.tokenize(document, add_special=False)
        if llama_cpp.llama_vocab_get_add_eos(vocab) and end >= 0:
            out.append(end)
        return out

    # --- inputs ------------------------------------------------------------------------------

    def _embedding_pooling(self) -> Pooling:
        if self.pooling is None:
            raise InvalidRequestError("this engine was not loaded with embedding=True")
        return self.pooling

    def _input_tokens(self, item: str | Sequence[int], index: int, truncate: bool) -> list[int]:
        if isinstance(item, str):
            tokens = self._model.tokenize(item)
        else:
            tokens = [int(t) for t in item]
            if any(not 0 <= t < self.info.n_vocab for t in tokens):
                raise InvalidRequestError(
                    f"input {index} holds token ids outside 0..{self.info.n_vocab - 1}",
                    param="input",
                )
        return self._checked(tokens, index, truncate, param="input")

    def _checked(self, tokens: list[int], index: int, truncate: bool, *, param: str) -> list[int]:
        limit = self.max_input_tokens
        if not tokens:
            raise InvalidRequestError(f"{param} {index} is empty", param=param)
        if len(tokens) <= limit:
            return tokens
        if not truncate:
            raise ContextLengthExceededError(
                f"{param} {index} is {len(tokens)} tokens; this model takes at most {limit} "
                "(pass truncate to cut it)",
                param=param,
            )
        # keep the closing special token (an encoder's SEP/EOS) the tokenizer put at the end
        last = tokens[-1]
        vocab = self._model.vocab
        closing = last in (
            int(llama_cpp.llama_vocab_eos(vocab)),
            int(llama_cpp.llama_vocab_sep(vocab)),
        )
        return [*tokens[: limit - 1], last] if closing else tokens[:limit]

    # --- batching ----------------------------------------------------------------------------

    def _start_job(
        self,
        token_lists: list[list[int]],
        finish: Callable[[list[list[float]]], list[list[float]]],
    ) -> concurrent.futures.Future[EmbedResult]:
        out: concurrent.futures.Future[EmbedResult] = concurrent.futures.Future()
        n_tokens = sum(len(t) for t in token_lists)
        if not token_lists:
            out.set_result(EmbedResult([], 0))
            return out
        if self._closed:
            raise EngineClosedError("the engine is closed")
        job = _Job(token_lists)

        def done(fut: concurrent.futures.Future[list[list[float]]]) -> None:
            exc = fut.exception()
            if exc is not None:
                out.set_exception(exc)
                return
            try:
                out.set_result(EmbedResult(finish(fut.result()), n_tokens))
            except Exception as err:  # noqa: BLE001 - handed to the caller
                out.set_exception(err)

        job.future.add_done_callback(done)
        with self._embed_lock:
            self._embed_queue.append(job)
        # A drain takes every waiting job, this one included unless an earlier drain (another
        # caller's) already did. If the scheduler stops first, the drain's future fails: the
        # jobs still queued fail with it instead of waiting for ever.
        drained: concurrent.futures.Future[None] = concurrent.futures.Future()
        drained.add_done_callback(self._fail_queued)
        self._sched.post("call", self._drain_embeddings, drained)
        return out

    def _fail_queued(self, drained: concurrent.futures.Future[None]) -> None:
        exc = drained.exception()
        if exc is None:
            return
        with self._embed_lock:
            jobs = list(self._embed_queue)
            self._embed_queue.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)

    def _drain_embeddings(self) -> None:
        # Runs on the scheduler thread, between steps; uses the sequence ids after the slots.
        while True:
            with self._embed_lock:
                if not self._embed_queue:
                    return
                pending = list(self._embed_queue)
            packed = self._pack(pending)
            try:
                outputs = self._decode_packed(packed)
            except BaseException as exc:
                for job, _ in packed:
                    if not job.future.done():
                        job.future.set_exception(exc)
                with self._embed_lock:
                    for job, _ in packed:
                        if job in self._embed_queue:
                            self._embed_queue.remove(job)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (job, i), vec in zip(packed, outputs, strict=True):
                job.results[i] = vec
            with self._embed_lock:
                for job, _ in packed:
                    if job.next == len(job.inputs) and job in self._embed_queue:
                        self._embed_queue.remove(job)
                        job.future.set_result([r for r in job.results if r is not None])

    def _pack(self, pending: list[_Job]) -> list[tuple[_Job, int]]:
        """The inputs of the next decode, oldest first: at most embed_seqs sequences and
        PACK_TOKENS tokens (n_batch when one input alone is longer; every input fits one
        decode on its own, see _checked)."""
        budget = min(self._opts.n_batch, PACK_TOKENS)
        n_tokens, out = 0, list[tuple[_Job, int]]()
        for job in pending:
            while job.next < len(job.inputs) and len(out) < self._opts.n_embed_seqs:
                size = len(job.inputs[job.next])
                if out and n_tokens + size > budget:
                    return out
                out.append((job, job.next))
                job.next += 1
                n_tokens += size
            if len(out) >= self._opts.n_embed_seqs:
                break
        return out

    def _decode_packed(self, packed: list[tuple[_Job, int]]) -> list[list[float]]:
        sched = self._sched
        first = self._opts.n_parallel
        seqs = [first + k for k in range(len(packed))]
        for seq in seqs:
            llama_cpp.llama_memory_seq_rm(sched.mem, seq, -1, -1)
        llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            b = sched.batch
            b.clear()
            for seq, (job, i) in zip(seqs, packed, strict=True):
                b.add_span(job.inputs[i], 0, seq, True)
            b.logits[: b.n] = 1
            rc = b.decode(self._ctx)
            self.embed_decodes += 1
            if rc != 0:
                raise InvalidRequestError(f"embedding decode failed (code {rc})")
            pooling = self._embedding_pooling()
            out: list[list[float]] = []
            for seq in seqs:
                ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
                if not ptr:
                    raise InvalidRequestError("this model produces no pooled embeddings")
                out.append(np.ctypeslib.as_array(ptr, shape=(pooling.n_out,)).tolist())
            return out
        finally:
            llama_cpp.llama_set_embeddings(self._ctx, False)
            for seq in seqs:
                llama_cpp.llama_memory_seq_rm(sched.mem, seq, -1, -1)
