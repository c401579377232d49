"""Reference decoders: what llama.cpp does with no scheduler around it.

``raw_greedy`` is the minimal loop over llama-cpp-python's low-level API (one ``llama_decode``
per step, greedy argmax in numpy) that ``ggufworker bench`` measures the engine against and
that tests use as ground truth. ``llama_greedy`` runs plain ``llama_cpp.Llama``, the
high-level API most Python users call. Both live here because only the engine package imports
llama_cpp.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.batch import Batch
from ggufworker.engine.model import ContextOptions, Model


@dataclass
class RawRun:
    """Outcome of one reference run."""

    tokens: list[list[int]]  # generated ids per prompt
    first_logits: list[np.ndarray] = field(default_factory=list)  # logits after each prompt
    prompt_s: float = 0.0  # wall time of prompt processing
    decode_s: float = 0.0  # wall time of the decode steps (after the first token)
    n_prompt: int = 0
    n_decoded: int = 0  # tokens produced by decode steps (excludes the first per prompt)


def raw_greedy(
    model: Model,
    prompts: Sequence[Sequence[int]],
    n_tokens: int,
    *,
    together: bool = True,
    opts: ContextOptions | None = None,
    keep_logits: bool = False,
) -> RawRun:
    """Greedy-decode ``prompts`` with one ``llama_decode`` per step.

    Args:
        model: a loaded model.
        prompts: token ids per prompt.
        n_tokens: tokens to generate per prompt (end-of-generation tokens are not special here).
        together: decode all prompts as one batch per step (sequence i = prompt i); if false,
            run them one after another, each alone, in the same context.
        opts: context settings (default: one slot per prompt, unified KV cache).
        keep_logits: also return a copy of the logits after each prompt.
    """
    n = len(prompts)
    opts = opts or ContextOptions(
        n_ctx=max(512, sum(len(p) + n_tokens for p in prompts) + 64), n_parallel=n
    )
    ctx = model.new_context(opts)
    try:
        mem = llama_cpp.llama_get_memory(ctx)
        batch = Batch(max(opts.n_batch, n))
        run = RawRun(tokens=[[] for _ in prompts], n_prompt=sum(len(p) for p in prompts))
        groups = [list(range(n))] if together else [[i] for i in range(n)]
        n_vocab = model.n_vocab
        # Warm up (first decodes allocate buffers and spin up threads), outside the timing.
        for warm in ([0], [0] * min(n, 4)):
            batch.clear()
            for s, t in enumerate(warm):
                batch.add(t, 0, s, True)
            _decode(batch, ctx)
            llama_cpp.llama_memory_clear(mem, True)
        for group in groups:
            t0 = time.perf_counter()
            last: dict[int, int] = {}
            # Prompts in n_batch-sized decodes (each prompt's last token gives logits).
            batch.clear()
            for i in group:
                p = list(prompts[i])
                for start in range(0, len(p), opts.n_batch):
                    chunk = p[start : start + opts.n_batch]
                    if batch.n + len(chunk) > batch.size:
                        _decode(batch, ctx)
                        batch.clear()
                    idx = batch.add_span(chunk, start, i, start + len(chunk) == len(p))
                    if start + len(chunk) == len(p):
                        last[i] = idx
            _decode(batch, ctx)
            for i in group:
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(ctx, last[i]), shape=(n_vocab,)
                )
                if keep_logits:
                    run.first_logits.append(logits.copy())
                run.tokens[i].append(int(logits.argmax()))
            t1 = time.perf_counter()
            run.prompt_s += t1 - t0
            for _ in range(n_tokens - 1):
                batch.clear()
                for j, i in enumerate(group):
                    batch.add(run.tokens[i][-1], len(prompts[i]) + len(run.tokens[i]) - 1, i, True)
                    last[i] = j
                _decode(batch, ctx)
                for i in group:
                    ptr = llama_cpp.llama_get_logits_ith(ctx, last[i])
                    run.tokens[i].append(int(np.ctypeslib.as_array(ptr, (n_vocab,)).argmax()))
            run.decode_s += time.perf_counter() - t1
            run.n_decoded += (n_tokens - 1) * len(group)
            for i in group:
                llama_cpp.llama_memory_seq_rm(mem, i, -1, -1)
        return run
    finally:
        llama_cpp.llama_free(ctx)


def _decode(batch: Batch, ctx: llama_cpp.llama_context_p) -> None:
    if batch.n:
        rc = batch.decode(ctx)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")


def llama_greedy(
    path: str | os.PathLike[str],
    prompt: str,
    n_tokens: int,
    *,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    ban: Sequence[int] = (),
) -> tuple[float, float, int]:
    """Greedy completion through plain ``llama_cpp.Llama`` (streamed, as a server would).

    ``ban`` lists token ids to forbid (end-of-generation tokens, so it makes all ``n_tokens``).

    Returns:
        (seconds to first token, seconds for the remaining tokens, tokens generated)
    """
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=n_ctx,
        n_threads=n_threads or os.cpu_count(),
        n_threads_batch=n_threads or os.cpu_count(),
        n_gpu_layers=-1,  # Llama's default keeps every layer on the CPU; offload as we do
        verbose=False,
    )
    try:
        t0 = time.perf_counter()
        first = None
        n = 0
        for _ in llm.create_completion(
            prompt,
            max_tokens=n_tokens,
            temperature=0.0,
            stream=True,
            logit_bias={int(t): -1e9 for t in ban} or None,
        ):
            n += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        first = first or end
        return first - t0, end - first, n
    finally:
        llm.close()
