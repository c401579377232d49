"""The vectorised sampler against llama.cpp's own sampler chain.

For the same logits and parameters, tokens drawn by :func:`sample_rows` must follow the
distribution that llama.cpp's chain (``build_chain``: bias, penalties, top-k, top-p, min-p,
temperature, dist) draws from: a two-sample chi-square test over many draws with fixed seeds.
No model is needed: llama.cpp's samplers are applied to token arrays built from the logits.
"""

from __future__ import annotations

import ctypes
import math
from collections import Counter

import numpy as np
import pytest

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.batch_sampling import (
    BLOCK,
    RowSampler,
    _top_candidates,
    draw_candidates,
    sample_rows,
)
from ggufworker.engine.sampling import build_chain, free_chain
from ggufworker.engine.types import SamplingParams

V = 3000
DRAWS = 12000
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def _logits(seed: int, rows: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a realistic shape: a few strong candidates over a long tail
    out = rng.normal(0.0, 2.0, size=(rows, V)).astype(np.float32)
    out[:, rng.integers(0, V, size=12)] += 6.0
    return out


def _chain_draws(
    row: np.ndarray, params: SamplingParams, n: int, history: list[int] = ()
) -> Counter:
    chain = build_chain(params, None, V)
    try:
        for tok in history:
            llama_cpp.llama_sampler_accept(chain, tok)
        buf = np.zeros(V, dtype=_TOKEN_DATA)
        arr_t = llama_cpp.llama_token_data * V
        data = arr_t()
        counts: Counter = Counter()
        for _ in range(n):
            buf["id"] = np.arange(V)
            buf["logit"] = row
            buf["p"] = 0.0
            ctypes.memmove(data, buf.ctypes.data, buf.nbytes)
            cur = llama_cpp.llama_token_data_array(data, V, -1, False)
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
            counts[int(data[cur.selected].id)] += 1
        return counts
    finally:
        free_chain(chain)


def _ours(
    row: np.ndarray, params: SamplingParams, n: int, history: list[int] = (), width: int = 4
) -> Counter:
    """n draws, made ``width`` rows at a time (the same logits in every row of the batch)."""
    logits = np.repeat(row[None, :], width, axis=0)
    samplers = [
        RowSampler(SamplingParams(**{**params.__dict__, "seed": 100 + i})) for i in range(width)
    ]
    for s in samplers:
        for tok in history:
            s.accept(tok)
    counts: Counter = Counter()
    for _ in range(n // width):
        counts.update(sample_rows(logits, list(range(width)), samplers))
    return counts


def _chi2_pvalue(a: Counter, b: Counter) -> float:
    """Two-sample chi-square test of equal distributions (Wilson-Hilferty p-value).

    Tokens drawn fewer than 20 times in both samples together share one bin, so that every
    cell is large enough for the chi-square approximation.
    """
    na, nb = sum(a.values()), sum(b.values())
    cells: list[tuple[int, int]] = []
    rare = [0, 0]
    for c in set(a) | set(b):
        x, y = a.get(c, 0), b.get(c, 0)
        if x + y < 20:
            rare[0] += x
            rare[1] += y
        else:
            cells.append((x, y))
    if sum(rare):
        cells.append((rare[0], rare[1]))
    stat = sum((x * math.sqrt(nb / na) - y * math.sqrt(na / nb)) ** 2 / (x + y) for x, y in cells)
    k = len(cells) - 1
    if k <= 0:
        return 1.0
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


CASES = {
    "chat-defaults": SamplingParams(temperature=0.8, top_p=0.95, top_k=40, min_p=0.05),
    "top-k-only": SamplingParams(temperature=1.0, top_p=1.0, top_k=20, min_p=0.0),
    "hot-top-p": SamplingParams(temperature=1.5, top_p=0.7, top_k=100, min_p=0.0),
    "min-p-cold": SamplingParams(temperature=0.5, top_p=1.0, top_k=64, min_p=0.2),
    "no-top-k": SamplingParams(temperature=0.9, top_p=0.9, top_k=0, min_p=0.0),
    "bias": SamplingParams(
        temperature=1.0, top_p=0.95, top_k=40, min_p=0.0, logit_bias={7: 9.0, 11: -100.0}
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_distribution_matches_llama_cpp_chain(case):
    params = CASES[case]
    row = _logits(3)[0]
    if params.logit_bias:
        row[11] = row.max() + 1.0  # the banned token would otherwise win most draws
    want = _chain_draws(row, params, DRAWS)
    got = _ours(row, params, DRAWS)
    p = _chi2_pvalue(got, want)
    top = f"ours {got.most_common(4)}, llama.cpp {want.most_common(4)}"
    assert p > 1e-3, f"{case}: distributions differ (p={p:.2e}); {top}"


def test_penalties_match_llama_cpp_chain():
    params = SamplingParams(
        temperature=1.0, top_p=1.0, top_k=30, min_p=0.0,
        repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.4,
    )  # fmt: skip
    row = _logits(5)[0]
    strong = [int(t) for t in np.argsort(-row)[:12]]
    # shift so that part of the top-k is negative: llama.cpp multiplies those by the penalty
    row -= row[strong[1]] + 1.0
    history = strong[:3] * 2 + [strong[4], strong[8], strong[10]]
    want = _chain_draws(row, params, DRAWS, history)
    got = _ours(row, params, DRAWS, history)
    p = _chi2_pvalue(got, want)
    assert p > 1e-3, f"penalties: distributions differ (p={p:.2e})"


def test_top_k_one_is_argmax():
    logits = _logits(9, rows=6)
    samplers = [RowSampler(SamplingParams(temperature=1.3, top_k=1, seed=i)) for i in range(6)]
    assert sample_rows(logits, list(range(6)), samplers) == logits.argmax(axis=1).tolist()


def test_seeded_rows_do_not_depend_on_the_batch():
    """A seeded request draws the same tokens alone and beside other requests."""
    logits = _logits(11, rows=5)
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, seed=42)

    def run(rows: list[int], steps: int = 30) -> list[int]:
        samplers = [RowSampler(params if r == 2 else SamplingParams(seed=r)) for r in rows]
        mine = []
        for _ in range(steps):
            toks = sample_rows(logits, rows, samplers)
            mine.append(toks[rows.index(2)])
        return mine

    assert run([2]) == run([0, 1, 2, 3, 4]) == run([4, 2])


def test_many_rows_at_vocabulary_scale():
    """A 128k vocabulary, 16 rows: every draw is one of its row's top-k tokens."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(16, 128_256)).astype(np.float32)
    samplers = [RowSampler(SamplingParams(top_k=40, seed=i)) for i in range(16)]
    toks = sample_rows(logits, list(range(16)), samplers)
    for r, t in enumerate(toks):
        top = set(np.argsort(-logits[r])[:40].tolist())
        assert t in top


def _adversarial_rows(v: int) -> list[np.ndarray]:
    """Rows that stress a block-maximum threshold (``v`` not a multiple of the block size)."""
    rng = np.random.default_rng(17)
    rows = [rng.normal(0.0, 2.0, size=v)]
    rows.append(rng.integers(-3, 4, size=v).astype(np.float64))  # heavy ties at the k-th value
    few = np.full(v, -np.inf)
    few[rng.choice(v, size=5, replace=False)] = rng.normal(size=5)  # fewer finite than k
    rows.append(few)
    dense = rng.normal(0.0, 1.0, size=v)
    dense[BLOCK : 2 * BLOCK] += 50.0  # the whole top-k inside one block
    rows.append(dense)
    tail = rng.normal(0.0, 1.0, size=v)
    tail[-(v % BLOCK) :] += 50.0  # ... or inside the tail past the last whole block
    rows.append(tail)
    flat = np.zeros(v)
    flat[::7] = 1.0  # every block maximum equal: all of them reach the threshold
    rows.append(flat)
    rows.append(np.full(v, -np.inf))
    return rows


@pytest.mark.parametrize("v", [BLOCK * 40 + 77, 3001, 60])
def test_candidates_hold_the_exact_top_k(v):
    """Every row's top k (np.argsort, any tie order) is in its candidate set, k per row."""
    assert v % BLOCK  # a tail past the last whole block
    base = _adversarial_rows(v)
    # some above the block count; k >= v (no cut) only in the last call
    ks = [k for k in (1, 3, 40, 41, 200, v // 2, v - 1) if k < v] + [v, v + 5]
    rows = np.array([r for r in base for _ in ks], dtype=np.float32)
    k = np.array([k for _ in base for k in ks], dtype=np.int64)
    cut = k < v
    for sel in (cut, np.flatnonzero(cut)[:1], cut & (np.arange(len(k)) < 3 * len(ks)), ~cut):
        block = rows[sel]
        got = _top_candidates(block, k[sel])
        assert len(got) == len(block)
        for row, kk, cand in zip(block, k[sel], got, strict=True):
            kk = min(int(kk), v)
            assert np.all(np.diff(cand) > 0) and 0 <= cand[0] and cand[-1] < v
            order = np.argsort(-row, kind="stable")
            assert np.isin(order[:kk], cand).all()
            # ties with the k-th value: every token at or above it, whichever order wins
            assert np.isin(np.flatnonzero(row >= row[order[kk - 1]]), cand).all()
    # rows strided in memory (every other row of a matrix), as a row group can be
    wide = np.repeat(rows[:: len(ks)], 2, axis=0)[::2]
    got = _top_candidates(wide, np.full(len(wide), 40))
    for row, cand in zip(wide, got, strict=True):
        order = np.argsort(-row, kind="stable")
        assert np.isin(order[: min(40, v)], cand).all()


def test_candidate_draws_add_the_bias_as_the_host_sampler_does():
    """Backend sampling's shared cut is over the raw logits: ``draw_candidates(bias=True)``
    adds each row's bias to its candidates and then keeps the row's own top-k, which must draw
    what the host sampler draws from the whole (biased) row, seed for seed."""
    rows = 6
    logits = _logits(11, rows)
    width = 64
    cand = np.argsort(-logits, axis=1, kind="stable")[:, :width].astype(np.int32)
    values = np.take_along_axis(logits, cand, axis=1)
    params = [
        SamplingParams(
            temperature=0.9,
            top_k=k,
            top_p=0.95,
            min_p=0.02,
            seed=70 + j,
            # bans on some of the row's strongest tokens (and one the cut does not hold)
            logit_bias={int(t): b for t, b in zip(cand[j, :3], (-100.0, -2.0, -0.5), strict=True)}
            | {int(cand[j, -1]) + 1 if j % 2 else 0: -1.0},
        )
        for j, k in enumerate((40, 20, 1, 40, 8, 30))
    ]
    params[3] = SamplingParams(temperature=0.9, top_k=40, seed=73)  # a row without bias
    for draw in range(20):
        host = sample_rows(logits, list(range(rows)), [RowSampler(p) for p in params])
        cut = draw_candidates(values.copy(), cand, [RowSampler(p) for p in params], bias=True)
        assert cut == host, f"draw {draw}"
        params = [SamplingParams(**{**p.__dict__, "seed": p.seed + 100}) for p in params]
    banned = [int(cand[j, 0]) for j in (0, 1, 2, 4, 5)]
    assert all(t != b for t, b in zip([cut[j] for j in (0, 1, 2, 4, 5)], banned, strict=True))
