"""A draft model for speculative decoding: a small GGUF sharing the target's vocabulary.

It has its own llama_context with one sequence per slot of the target (same sequence ids) and
is used only on the scheduler thread. Before drafting, each sequence catches up with its slot's
tokens (prefix reuse as in the target: the common prefix stays, the rest is removed and fed
again); then every drafting sequence is extended greedily, one batched decode per draft
position, all sequences together. Its KV is left holding the drafts; the next catch-up cuts
whatever the target rejected.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.batch import Batch
from ggufworker.engine.model import ContextOptions, Model
from ggufworker.engine.slots import common_prefix
from ggufworker.errors import ModelLoadError

logger = logging.getLogger(__name__)


class DraftModel:
    """The draft model's weights, context and per-sequence tokens (scheduler thread only)."""

    def __init__(
        self, path: str | os.PathLike[str], target: Model, opts: ContextOptions, *,
        n_gpu_layers: int | None = None,
    ) -> None:  # fmt: skip
        self.model = Model(path, n_gpu_layers=n_gpu_layers)
        try:
            check_vocab(self.model, target)
            self.ctx = self.model.new_context(
                ContextOptions(
                    n_ctx=opts.n_ctx,
                    n_parallel=opts.n_parallel,
                    n_threads=opts.n_threads,
                    n_batch=opts.n_batch,
                    flash_attn=opts.flash_attn,
                    kv_unified=opts.kv_unified,
                )
            )
        except BaseException:
            self.model.close()
            raise
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = self.model.n_vocab
        self.n_batch = opts.n_batch
        self.batch = Batch(opts.n_batch)
        self.cache: dict[int, list[int]] = {}  # tokens whose KV each sequence holds

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None  # type: ignore[assignment]
        self.model.close()

    def forget(self, seq: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.mem, seq, -1, -1)
        self.cache.pop(seq, None)

    def draft(self, items: list[tuple[int, list[int], int, int]]) -> tuple[list[list[int]], float]:
        """Greedy drafts: for each (sequence id, tokens in the target's KV, the token sampled
        after them, draft length), that many tokens the draft model predicts next.

        Returns:
            (the drafts in the order of ``items``, seconds spent in draft decodes per depth)
        """
        # catch up: every sequence ends up fed with tokens + [last], logits on the last one
        feeds: list[tuple[int, list[int], int]] = []  # (seq, tokens to feed, first position)
        for seq, tokens, last, _k in items:
            have = self.cache.setdefault(seq, [])
            full = [*tokens, last]
            keep = min(common_prefix(have, full), len(full) - 1)
            if keep < len(have):
                if not llama_cpp.llama_memory_seq_rm(self.mem, seq, keep, -1):
                    llama_cpp.llama_memory_seq_rm(self.mem, seq, -1, -1)
                    keep = 0
                del have[keep:]
            feeds.append((seq, full[keep:], keep))
        self._feed(feeds)
        drafts: list[list[int]] = [[] for _ in items]
        live = list(range(len(items)))  # row j of the last decode is item live[j]
        depth = max(k for *_, k in items)
        t_decode = 0.0
        for step in range(depth):
            logits = self._logits(len(live))
            picks = [int(logits[j].argmax()) for j in range(len(live))]
            for i, tok in zip(live, picks, strict=True):
                drafts[i].append(tok)
            cont = [(i, tok) for i, tok in zip(live, picks, strict=True) if items[i][3] > step + 1]
            if not cont:
                break
            t0 = time.perf_counter()
            self._feed([(items[i][0], [tok], len(self.cache[items[i][0]])) for i, tok in cont])
            t_decode += time.perf_counter() - t0
            live = [i for i, _ in cont]
        return drafts, t_decode / max(depth - 1, 1)

    def _logits(self, n_rows: int) -> np.ndarray:
        return np.ctypeslib.as_array(
            llama_cpp.llama_get_logits(self.ctx), shape=(n_rows, self.n_vocab)
        )

    def _decode(self) -> None:
        rc = self.batch.decode(self.ctx)
        if rc != 0:
            raise RuntimeError(f"the draft model's llama_decode returned {rc}")

    def _feed(self, feeds: list[tuple[int, list[int], int]]) -> None:
        """Decode each (sequence, tokens, first position): all but the last tokens packed into
        batches without logits, then one decode of every sequence's last token with logits
        (row j is ``feeds[j]``)."""
        batch = self.batch
        batch.clear()
        for seq, toks, pos in feeds:
            body, at = toks[:-1], pos
            while body:
                take = body[: self.n_batch - batch.n]
                batch.add_span(take, at, seq, False)
                self.cache[seq].extend(take)
                body, at = body[len(take) :], at + len(take)
                if batch.n == self.n_batch:
                    self._decode()
                    batch.clear()
        if batch.n:
            self._decode()
            batch.clear()
        for seq, toks, pos in feeds:
            batch.add(toks[-1], pos + len(toks) - 1, seq, True)
            self.cache[seq].append(toks[-1])
        self._decode()


def check_vocab(draft: Model, target: Model) -> None:
    """A draft must tokenize as the target does (llama-server's compatibility rule: same vocab
    size, same special tokens, same token texts).

    Raises:
        ModelLoadError: they differ.
    """
    why = ""
    if draft.n_vocab != target.n_vocab:
        why = f"{draft.n_vocab} tokens against {target.n_vocab}"
    elif set(draft.eog_ids()) != set(target.eog_ids()):
        why = "different end-of-generation tokens"
    else:
        step = max(1, draft.n_vocab // 997)
        for tok in range(0, draft.n_vocab, step):
            if draft.piece(tok, special=True) != target.piece(tok, special=True):
                why = f"token {tok} differs"
                break
    if why:
        raise ModelLoadError(
            f"draft model {draft.path.name} does not share the vocabulary of {target.path.name}: "
            f"{why}"
        )
