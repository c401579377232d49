"""Pooled embeddings from an engine loaded with ``embedding=True``: one text at a time on the
scheduler thread, in the extra sequence id. Mixed into :class:`~ggufworker.engine.Engine`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.model import ContextOptions, Model
from ggufworker.engine.scheduler import Scheduler
from ggufworker.engine.types import ModelInfo
from ggufworker.errors import ContextLengthExceededError, InvalidRequestError

T = TypeVar("T")


class Embedding:
    """The engine's embedding methods (see the module doc)."""

    _sched: Scheduler
    _model: Model
    _opts: ContextOptions
    _ctx: Any
    info: ModelInfo

    def _call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError  # the engine's

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Pooled, L2-normalised embeddings of each text (engine loaded with ``embedding=True``).

        Raises:
            InvalidRequestError: the engine was not loaded for embeddings.
            ContextLengthExceededError: a text is longer than one batch.
        """
        if not self._opts.embedding:
            raise InvalidRequestError("this engine was not loaded with embedding=True")
        token_lists = [self._model.tokenize(t) for t in texts]
        for toks in token_lists:
            if not toks or len(toks) > self._opts.n_batch:
                raise ContextLengthExceededError(
                    f"each input must be 1..{self._opts.n_batch} tokens", param="input"
                )
        return self._call(lambda: [self._embed_one(t) for t in token_lists])

    def _embed_one(self, tokens: list[int]) -> list[float]:
        # Runs on the scheduler thread, between steps; uses the extra sequence id.
        seq = self._opts.n_parallel
        sched = self._sched
        llama_cpp.llama_memory_seq_rm(sched.mem, seq, -1, -1)
        llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            b = sched.batch
            b.clear()
            b.add_span(tokens, 0, seq, True)
            b.logits[: b.n] = 1
            rc = b.decode(self._ctx)
            if rc != 0:
                raise InvalidRequestError(f"embedding decode failed (code {rc})")
            ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
            if not ptr:
                raise InvalidRequestError("this model produces no pooled embeddings")
            vec = np.ctypeslib.as_array(ptr, shape=(self.info.n_embd,)).tolist()
        finally:
            llama_cpp.llama_set_embeddings(self._ctx, False)
            llama_cpp.llama_memory_seq_rm(sched.mem, seq, -1, -1)
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]
