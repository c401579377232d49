"""Sampling for every sequence of a step at once, in numpy, instead of one llama.cpp chain each.

The chain :func:`ggufworker.engine.sampling.build_chain` builds for a request is, in order:
logit bias, repetition penalties, top-k, top-p, min-p, temperature, then a draw. This module
computes the same distribution for all of a step's sampled rows together:

1. Candidates. Only a row's top-k tokens can be drawn, so the full vocabulary is cut to a small
   candidate set per row with one pass over the logits: the maximum of each block of
   :data:`BLOCK` consecutive tokens. The k-th largest block maximum is a threshold that at least
   k tokens reach (k blocks' maxima), so the row's true top k all lie at or above it, and only
   blocks whose maximum reaches it (k of them, a few more on ties) plus the tail past the last
   whole block are read again, keeping the tokens at or above the threshold. Tokens touched by
   a bias or a penalty join the set, with ``k + touched`` raw candidates so that penalised
   tokens dropping out cannot leave the set short.
2. On the (rows x candidates) matrix, vectorised: softmax, top-p (the smallest prefix reaching
   p, at least one token), min-p (``logit >= max + log(min_p)``), temperature, and an
   inverse-CDF draw with one uniform per row from that request's own generator.

Each request owns a ``numpy.random.Generator`` seeded from its ``seed``, and draws exactly one
number per token, so a seeded request gives the same tokens whatever else is in the batch.
Requests with a grammar keep llama.cpp's chain (the grammar stack is llama.cpp's); rows with
top-k disabled take an exact full-vocabulary path row by row.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import Counter, deque
from collections.abc import Sequence

import numpy as np

from ggufworker.engine.types import SamplingParams

#: Stand-in parameters for greedy rows: the first (largest) candidate always wins.
_GREEDY = SamplingParams(temperature=1.0, top_p=1.0, top_k=1, min_p=0.0)
#: Tokens per block of the candidate pass (fewer where ``vocabulary // k`` is smaller). Smaller
#: blocks re-read less after the threshold but cost more per block in the maximum pass: for 1
#: to 64 rows of a 128k vocabulary 256 and 512 were within noise, 128 several times slower.
BLOCK = 256


def vectorised(params: SamplingParams) -> bool:
    """Whether a request's sampling can run in :func:`sample_rows` (everything but grammars)."""
    return params.grammar is None and params.json_schema is None and params.tool_grammar is None


class RowSampler:
    """One request's sampling state: its random generator and its penalty history."""

    __slots__ = ("params", "rng", "history", "bias_ids", "bias", "bias_key", "conf", "top_k")

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        # seed None: fresh OS entropy, like llama.cpp's LLAMA_DEFAULT_SEED
        seed = None if params.seed is None else params.seed & 0xFFFFFFFF
        self.rng = np.random.default_rng(seed)
        penalised = (
            params.repeat_penalty != 1.0
            or params.presence_penalty != 0.0
            or params.frequency_penalty != 0.0
        )
        self.history: deque[int] | None = (
            deque(maxlen=max(params.repeat_last_n, 0)) if penalised else None
        )
        items = sorted((int(t), float(b)) for t, b in params.logit_bias.items())
        self.bias_ids = np.array([t for t, _ in items], dtype=np.int64)
        # -inf bans a token; llama.cpp clamps the bias to a finite value (see build_chain)
        self.bias = np.array([max(b, -1e30) for _, b in items], dtype=np.float32)
        # equal keys, equal biases: rows that share one are biased together (_add_bias)
        self.bias_key = (self.bias_ids.tobytes(), self.bias.tobytes())
        # its row of _pick's settings, made once; greedy rows (penalties only) take their first
        # column whatever the uniform is
        self.conf = _GREEDY_CONF if params.temperature <= 0 else _conf([params])
        # how many top candidates its draw looks at: one for greedy
        self.top_k = 1 if params.temperature <= 0 else params.top_k

    def accept(self, token: int) -> None:
        """Record a generated token (the penalty window), as llama.cpp's chain accepts it."""
        if self.history is not None:
            self.history.append(token)

    def touched(self) -> np.ndarray:
        """Token ids whose logit the bias or the penalties change (ascending, unique)."""
        if self.history:
            hist = np.fromiter(self.history, dtype=np.int64, count=len(self.history))
            return np.union1d(self.bias_ids, hist)
        return self.bias_ids

    def modify(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``values`` (raw logits of ``ids``) after the logit bias and the penalties."""
        out = values.astype(np.float32, copy=True)
        if len(self.bias_ids):
            pos = np.searchsorted(self.bias_ids, ids)
            pos = np.minimum(pos, len(self.bias_ids) - 1)
            hit = self.bias_ids[pos] == ids
            out[hit] += self.bias[pos[hit]]
        if self.history:
            p = self.params
            counts = Counter(self.history)
            for j, tok in enumerate(ids.tolist()):
                c = counts.get(tok)
                if not c:
                    continue
                v = out[j]
                v = v * p.repeat_penalty if v <= 0 else v / p.repeat_penalty
                out[j] = v - c * p.frequency_penalty - p.presence_penalty
        return out


def _top_candidates(rows: np.ndarray, k: np.ndarray) -> list[np.ndarray]:
    """Per row, ascending indices of a superset of its ``k[i]`` largest values.

    Every token at or above the row's ``k[i]``-th largest value is in the set (ties included),
    so any top-k of the row lies inside it. ``rows`` is row-major (rows may be strided).
    """
    n, v = rows.shape
    kmax = int(k.max()) if n else 0
    if n == 0 or kmax >= v:
        return [np.arange(v) for _ in range(n)]
    size = min(BLOCK, v // kmax)  # at least kmax blocks per row
    nblocks = v // size
    body = nblocks * size
    blocks = rows[:, :body].reshape(n, nblocks, size)  # a view of row-major rows, no copy
    # initial= selects numpy's fast reduction loop: without it, reducing many short blocks is
    # several times slower (numpy 2.4, 64 x 128k in blocks of 256: 9.6 ms against 2.7 ms)
    bmax = blocks.max(axis=2, initial=-np.inf)
    part = np.partition(bmax, nblocks - kmax, axis=1)
    if int(k.min()) == kmax:
        thr = part[:, nblocks - kmax]
    else:  # the k[i]-th largest of each row: the partition leaves the top kmax last
        top = np.sort(part[:, nblocks - kmax :], axis=1)
        thr = top[np.arange(n), kmax - k]
    hit_rows, hit_blocks = np.nonzero(bmax >= thr[:, None])
    picked = blocks[hit_rows, hit_blocks]  # (blocks reaching the threshold, size)
    # a flat nonzero: a 2-D one is several times slower
    flat = np.flatnonzero(picked >= thr[hit_rows, None])
    which, offset = np.divmod(flat, size)
    keys = hit_rows[which] * v + hit_blocks[which] * size + offset  # row * v + token, ascending
    if body < v:
        tail = np.flatnonzero(rows[:, body:] >= thr[:, None])
        t_row, t_off = np.divmod(tail, v - body)
        keys = np.sort(np.concatenate([keys, t_row * v + body + t_off]))
    if n == 1:
        return [keys]
    bounds = np.searchsorted(keys, np.arange(n + 1) * v)
    return [keys[bounds[i] : bounds[i + 1]] - i * v for i in range(n)]


def _full_row(values: np.ndarray, conf: np.ndarray, u: float) -> int:
    """The exact chain over a whole (modified) row under its ``conf`` row (:func:`_conf`):
    for rows without a top-k cut."""
    order = np.argsort(-values, kind="stable")
    return int(order[_pick(values[order][None, :], conf, np.array([u]))[0]])


def _conf(params: Sequence[SamplingParams]) -> np.ndarray:
    """:func:`_pick`'s settings per row: top-p (``inf`` where it is off), log(min-p) (``-inf``
    where min-p is off: every token passes) and the temperature."""
    conf = np.array([(p.top_p, p.min_p, p.temperature) for p in params], dtype=np.float64)
    conf[conf[:, 0] >= 1.0, 0] = np.inf
    min_p = conf[:, 1]
    # `where` skips log(0)
    conf[:, 1] = np.log(min_p, out=np.full_like(min_p, -np.inf), where=min_p > 0.0)
    return conf


#: _pick's settings for greedy rows with penalties (their first column always wins)
_GREEDY_CONF = _conf([_GREEDY])


def _pick(vals: np.ndarray, conf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Column drawn per row of ``vals`` (rows sorted descending, ``-inf`` padded) under the
    rows of ``conf`` (:func:`_conf`): top-p, min-p, temperature, inverse CDF with the
    uniforms ``u``."""
    width = vals.shape[1]
    top_p, log_min_p, temp = conf[:, 0:1], conf[:, 1:2], conf[:, 2:3]
    x = vals.astype(np.float64)
    mx = x[:, :1]
    d = x - mx
    w = np.exp(d)
    prob = w / np.add.reduce(w, axis=1, keepdims=True)
    # top-p: keep while the sum of the tokens before is still below p (the crossing one stays)
    # (ufunc methods: np.cumsum and np.sum are the same loops behind ~1 µs of wrapper each)
    before = np.add.accumulate(prob, axis=1)
    before -= prob
    keep = before < top_p
    # min-p on what top-p kept (its maximum is the first column, which always stays)
    keep &= x >= mx + log_min_p
    keep &= np.isfinite(x)
    keep[:, 0] = True
    w = np.exp(np.where(keep, d / temp, -np.inf))
    cdf = np.add.accumulate(w, axis=1)
    col = np.add.reduce(cdf <= u[:, None] * cdf[:, -1:], axis=1)
    return np.minimum(col, width - 1)


def sample_rows(
    logits: np.ndarray, rows: Sequence[int], samplers: Sequence[RowSampler]
) -> list[int]:
    """Draw one token for each ``rows[i]`` of ``logits`` under ``samplers[i]``.

    Args:
        logits: (outputs, vocabulary) float32 view of the step's logits; not modified.
        rows: the row of each sequence to sample.
        samplers: each sequence's :class:`RowSampler` (temperature > 0 or penalties; no grammar).

    Returns:
        The token ids, in the order of ``rows``. The caller passes each to ``accept``.
    """
    n = len(rows)
    if n == 0:
        return []
    out = [0] * n
    u = np.array([s.rng.random() for s in samplers])
    cut = [i for i, s in enumerate(samplers) if s.top_k > 0]  # top-k rows, greedy ones too
    in_cut = set(cut)
    full = [i for i in range(n) if i not in in_cut]
    for i in full:
        s = samplers[i]
        row = logits[rows[i]]
        ids = s.touched()
        values = row.astype(np.float32, copy=True)
        if len(ids):
            values[ids] = s.modify(ids, row[ids])
        out[i] = _full_row(values, s.conf, float(u[i]))
    if not cut:
        return out
    groups = [cut[g : g + ROWS_PER_TASK] for g in range(0, len(cut), ROWS_PER_TASK)]
    pool = _pool() if len(groups) > 1 else None
    if pool is None:
        done = [_draw(logits, rows, samplers, g, u) for g in groups]
    else:  # numpy releases the GIL in the scans: rows of a large step in parallel
        done = list(pool.map(lambda g: _draw(logits, rows, samplers, g, u), groups))
    for g, toks in zip(groups, done, strict=True):
        for i, tok in zip(g, toks, strict=True):
            out[i] = tok
    return out


def draw_candidates(
    values: np.ndarray, ids: np.ndarray, samplers: Sequence[RowSampler], *, bias: bool = False
) -> list[int]:
    """Draw one token per row from candidates that hold the row's top-k, with the logit bias
    and penalties applied (backend sampling's cut in the decode graph).

    Args:
        values: (rows, width) candidate logits, in no particular order, ``-inf`` padded; a
            row's top-k (its request's) of them are kept.
        ids: (rows, width) their token ids.
        samplers: each row's :class:`RowSampler` (its parameters and generator; the penalties
            were the graph's, so its history is not used).
        bias: add each row's logit bias to its candidates here (the graph's cut was over the
            raw logits); ``values`` is modified.

    Returns:
        The token ids drawn, one uniform per row from each request's generator, as
        :func:`sample_rows` draws from its own exact top-k.
    """
    if bias:
        _add_bias(values, ids, samplers)
    order = np.lexsort((ids, -values), axis=1)  # by value descending, then by id
    width = values.shape[1]
    ks = [min(s.top_k, width) for s in samplers]
    kmax = max(ks)
    # the rows' top-k, as wide as the widest (the host sampler's own width)
    order = order[:, :kmax]
    r = np.arange(len(samplers))[:, None]
    vals = values[r, order]  # (fancy indexing: take_along_axis costs ~5 µs a call more)
    toks = ids[r, order]
    if min(ks) < kmax:  # rows with a smaller top-k
        vals[np.arange(kmax)[None, :] >= np.array(ks)[:, None]] = -np.inf
    u = np.array([s.rng.random() for s in samplers])
    conf = samplers[0].conf if len(samplers) == 1 else np.concatenate([s.conf for s in samplers])
    cols = _pick(vals, conf, u)
    return toks[r[:, 0], cols].tolist()


def _add_bias(values: np.ndarray, ids: np.ndarray, samplers: Sequence[RowSampler]) -> None:
    """Each row's logit bias added to its candidates (float32 adds, as
    :meth:`RowSampler.modify` makes), one lookup for all the rows that share a bias (commonly
    every row: clients ban the same end-of-sequence token)."""
    groups: dict[tuple[bytes, bytes], list[int]] = {}
    for j, s in enumerate(samplers):
        if len(s.bias_ids):
            groups.setdefault(s.bias_key, []).append(j)
    for rows in groups.values():
        first = samplers[rows[0]]
        sub = ids[rows]
        pos = np.minimum(np.searchsorted(first.bias_ids, sub), len(first.bias_ids) - 1)
        hit = first.bias_ids[pos] == sub
        if hit.any():
            block = values[rows]
            block[hit] += first.bias[pos[hit]]
            values[rows] = block


#: rows one task of the thread pool draws (a step of 64 sequences: 8 tasks)
ROWS_PER_TASK = 8
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor | None:
    """A process-wide thread pool for large steps; None below 4 CPUs (on the 2-core VM a pool
    of 2 made 64 rows slower: 9.6 ms against 7.3 ms serial)."""
    global _POOL
    if _POOL is None:
        from ggufworker.engine.threads import available_cpus

        n = min(8, available_cpus())
        if n < 4:
            return None
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="sampler")
    return _POOL


def _draw(
    logits: np.ndarray,
    rows: Sequence[int],
    samplers: Sequence[RowSampler],
    cut: list[int],
    u: np.ndarray,
) -> list[int]:
    """Tokens for the sequences ``cut`` (indices into ``rows``/``samplers``), top-k rows."""
    idx = [rows[i] for i in cut]
    if idx == list(range(idx[0], idx[0] + len(idx))):
        block = logits[idx[0] : idx[0] + len(idx)]  # consecutive rows: a view, no copy
    else:
        block = logits[np.asarray(idx, dtype=np.int64)]
    touched = [samplers[i].touched() for i in cut]
    ks = np.array(
        [samplers[i].top_k + len(t) for i, t in zip(cut, touched, strict=True)], dtype=np.int64
    )
    cands = _top_candidates(block, ks)
    width = 0
    ids_rows: list[np.ndarray] = []
    val_rows: list[np.ndarray] = []
    for j, i in enumerate(cut):
        s = samplers[i]
        t = touched[j]
        ids = np.union1d(cands[j], t) if len(t) else cands[j]
        vals = block[j, ids]
        if len(t):
            vals = s.modify(ids, vals)
        k = min(s.top_k, len(ids))
        top = np.argpartition(-vals, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
        top = top[np.argsort(-vals[top], kind="stable")]
        ids_rows.append(ids[top])
        val_rows.append(vals[top])
        width = max(width, k)
    mat = np.full((len(cut), width), -np.inf, dtype=np.float32)
    for j, v in enumerate(val_rows):
        mat[j, : len(v)] = v
    cols = _pick(mat, np.concatenate([samplers[i].conf for i in cut]), u[cut])
    return [int(ids_rows[j][cols[j]]) for j in range(len(cut))]
