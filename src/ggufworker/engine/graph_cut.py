"""One top-k cut for all of a step's sampled rows, inside llama.cpp's decode graph.

llama.cpp's own top-k sampler (``llama_sampler_init_top_k``) works on one sequence's row: at 64
sequences the decode graph sorts 64 vocabulary-sized rows one after the other, 3.4 ms of the
H200's time per step (scripts/step_profile.py). This module's sampler is a custom
``llama_sampler_i`` whose graph part cuts every output row of the step at once, the first
time one of its instances is applied in a graph build, and hands each sequence its row of the
result:

1. the maximum of each block of ``block`` consecutive logits (one argmax over all rows),
2. the :data:`K` blocks with the largest maxima per row (a sort of ``vocabulary / block``
   values: one small kernel for all rows),
3. the exact top :data:`K` of those blocks' ``K * block`` logits (one segmented sort).

This beats one sort of each whole row even for a single row: on the H200, ggml's top-k of one
128k row cost the step ~590 µs more than these three steps (scripts/step_profile.py).

The row's true top-K lie in those blocks: K blocks reach the K-th largest block maximum, so
the K-th largest logit reaches it too, and every logit at or above it sits in a block whose
maximum does. Only K logits and ids per row come back; the host then cuts each row to its
request's top-k and draws (:func:`~ggufworker.engine.batch_sampling.draw_candidates`), the same
distribution as the host sampler's exact top-k.

It serves requests with ``0 < top_k <= K``, without penalties, and with a logit bias only of
negative values on at most ``K - top_k`` tokens (:func:`serves`): the cut is over the raw
logits, so the host adds the bias to the candidates. A bias that only lowers logits cannot
lift a token from outside the raw top K into the biased top-k, since at least ``top_k``
unbiased candidates stay at or above every token outside. Penalties (up to ``repeat_last_n``
tokens) and positive biases keep llama.cpp's per-sequence chain, whose graph applies them
to the row before its top-k.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.types import SamplingParams
from ggufworker.errors import GenerationError

logger = logging.getLogger(__name__)

#: candidates per row the graph keeps: covers the common top-k settings (20, 40, 50, 64)
K = 64
#: block sizes tried in order: the first that gives at least K blocks (the last one padded)
BLOCKS = (256, 128, 64)

_GGML_TYPE_I32 = 26
_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class _Tensor(ctypes.Structure):
    """The leading fields of ``struct ggml_tensor`` (ggml.h) this module reads."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", _P),
        ("ne", _I64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", _P * 10),
        ("view_src", _P),
        ("view_offs", ctypes.c_size_t),
    ]


def _fn(name: str, restype: Any, *argtypes: Any, keep_gil: bool = False) -> Any:
    """A foreign function of its own (not llama-cpp-python's shared attribute): ggml's symbols
    resolve through libllama, which links them. ``keep_gil`` (``PYFUNCTYPE``) is for the getters
    read_candidates calls after one ``llama_synchronize``: each GIL release is a chance for
    another thread (the server's event loop) to take it, and the draw for the next decode then
    waits for it back."""
    proto = ctypes.PYFUNCTYPE if keep_gil else ctypes.CFUNCTYPE
    return proto(restype, *argtypes)((name, llama_cpp.llama_cpp._lib))


_reshape_1d = _fn("ggml_reshape_1d", _P, _P, _P, _I64)
_reshape_2d = _fn("ggml_reshape_2d", _P, _P, _P, _I64, _I64)
_reshape_3d = _fn("ggml_reshape_3d", _P, _P, _P, _I64, _I64, _I64)
_view_1d = _fn("ggml_view_1d", _P, _P, _P, _I64, ctypes.c_size_t)
_argmax = _fn("ggml_argmax", _P, _P, _P)
_get_rows = _fn("ggml_get_rows", _P, _P, _P, _P)
_top_k = _fn("ggml_top_k", _P, _P, _P, ctypes.c_int)
_arange = _fn("ggml_arange", _P, _P, ctypes.c_float, ctypes.c_float, ctypes.c_float)
_cast = _fn("ggml_cast", _P, _P, _P, ctypes.c_int)
_pad = _fn("ggml_pad", _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int)
_add = _fn("ggml_add", _P, _P, _P, _P)
_scale_bias = _fn("ggml_scale_bias", _P, _P, _P, ctypes.c_float, ctypes.c_float)
_step = _fn("ggml_step", _P, _P, _P)

_logits_ith = _fn("llama_get_sampled_logits_ith", _P, _P, ctypes.c_int32, keep_gil=True)
_candidates_ith = _fn("llama_get_sampled_candidates_ith", _P, _P, ctypes.c_int32, keep_gil=True)
_count_ith = _fn(
    "llama_get_sampled_candidates_count_ith", ctypes.c_uint32, _P, ctypes.c_int32, keep_gil=True
)
_memmove = ctypes.PYFUNCTYPE(_P, _P, _P, ctypes.c_size_t)(
    int(ctypes.cast(ctypes.memmove, _P).value or 0)
)

_NAME = b"ggufworker-cut"


def block_for(n_vocab: int) -> int:
    """The block size for a vocabulary, or 0 where none fits (vocabularies under K * 64
    tokens: llama.cpp's per-sequence top-k then)."""
    return next((b for b in BLOCKS if -(-n_vocab // b) >= K), 0)


def serves(params: SamplingParams, n_vocab: int) -> bool:
    """Whether a sampled request's candidates can come from the shared cut (module doc)."""
    if not 0 < params.top_k <= K or not block_for(n_vocab):
        return False
    penalties = (params.repeat_penalty, params.presence_penalty, params.frequency_penalty)
    if penalties != (1.0, 0.0, 0.0):
        return False
    bias = params.logit_bias
    return len(bias) <= K - params.top_k and all(b < 0 for b in bias.values())


class GraphCut:
    """The custom sampler of one llama_context (scheduler thread only).

    :meth:`new_chain` makes a chain holding one instance; all instances share one cut per
    graph build, made by whichever is applied first after llama.cpp resets them.
    """

    def __init__(self, n_vocab: int) -> None:
        self.block = block_for(n_vocab)
        self._cut: tuple[tuple[int, int], int, int] | None = None  # (graph, logits), vals, ids
        # The interface and its callbacks must outlive every sampler made from them.
        iface = llama_cpp.llama_sampler_i()
        iface.name = llama_cpp.llama_sampler_i_name(lambda _s: _NAME)
        iface.apply = llama_cpp.llama_sampler_i_apply(lambda _s, _c: None)
        iface.backend_init = llama_cpp.llama_sampler_i_backend_init(lambda _s, _b, _n: True)
        iface.backend_apply = llama_cpp.llama_sampler_i_backend_apply(self._apply)
        iface.backend_reset = llama_cpp.llama_sampler_i_backend_reset(self._reset)
        self._iface = iface

    def new_chain(self) -> int:
        """A sampler chain (address) with one cut sampler, for ``llama_set_sampler``."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        smpl = llama_cpp.llama_sampler_init(ctypes.byref(self._iface), None)
        llama_cpp.llama_sampler_chain_add(chain, smpl)
        return chain  # type: ignore[no-any-return]

    def _reset(self, _smpl: Any) -> None:
        self._cut = None  # a new graph: its tensors are not the last graph's

    def _apply(self, _smpl: Any, ctx: int, _gf: int, data: Any) -> None:
        try:
            d = data.contents
            row = _Tensor.from_address(d.logits)
            n_vocab = int(row.ne[0])
            root = _Tensor.from_address(row.view_src) if row.view_src else None
            if root is not None and root.ne[0] == n_vocab and root.nb[1] == 4 * n_vocab:
                logits, r = int(row.view_src), int(row.view_offs) // int(root.nb[1])
            else:  # a lone row (llama.cpp's probe graph at attach time)
                logits, r = _reshape_2d(ctx, d.logits, n_vocab, 1), 0
            if self._cut is None or self._cut[0] != (ctx, logits):
                vals, ids = self._build(ctx, logits)
                self._cut = ((ctx, logits), vals, ids)
            _, vals, ids = self._cut
            d.logits = _view_1d(ctx, vals, K, r * K * 4)
            d.candidates = _view_1d(ctx, ids, K, r * K * 4)
        except Exception:  # a C callback must not raise; the row then comes back whole
            logger.exception("graph cut: building the graph part failed")

    def _build(self, ctx: int, logits: int) -> tuple[int, int]:
        """The cut of every row of ``logits`` (n_vocab x rows): K values and ids per row."""
        t = _Tensor.from_address(logits)
        n_vocab, rows = int(t.ne[0]), int(t.ne[1])
        blk = self.block
        nb = -(-n_vocab // blk)
        if nb * blk != n_vocab:  # pad each row to whole blocks with logits that never win
            n_pad = nb * blk
            beyond = _step(ctx, _scale_bias(ctx, _arange(ctx, 0.0, n_pad, 1.0), 1.0, 0.5 - n_vocab))
            padded = _pad(ctx, logits, n_pad - n_vocab, 0, 0, 0)
            logits = _add(ctx, padded, _scale_bias(ctx, beyond, -1e30, 0.0))
            n_vocab = n_pad
        # 1. each block's maximum (its argmax, then the value there)
        am = _argmax(ctx, _reshape_2d(ctx, logits, blk, nb * rows))
        maxima = _get_rows(
            ctx, _reshape_3d(ctx, logits, 1, blk, nb * rows), _reshape_2d(ctx, am, 1, nb * rows)
        )
        # 2. the K blocks with the largest maxima, per row
        best = _top_k(ctx, _reshape_2d(ctx, maxima, nb, rows), K)
        values = _get_rows(ctx, _reshape_3d(ctx, logits, blk, nb, rows), best)
        table = _reshape_2d(ctx, _arange(ctx, 0.0, n_vocab, 1.0), blk, nb)
        ids = _get_rows(ctx, table, _reshape_1d(ctx, best, K * rows))
        # 3. the top K of those blocks' logits
        pos = _top_k(ctx, _reshape_2d(ctx, values, blk * K, rows), K)
        vals = _get_rows(ctx, _reshape_3d(ctx, values, 1, blk * K, rows), pos)
        ids = _get_rows(ctx, _reshape_3d(ctx, ids, 1, blk * K, rows), pos)
        return vals, _cast(ctx, ids, _GGML_TYPE_I32)


def read_candidates(
    ctx: Any, out_idx: list[int], width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate logits and ids the graph left for each batch index in ``out_idx`` after a
    decode (the shared cut's K, or a per-sequence top-k's k), as ``-inf``-padded rows.

    Args:
        ctx: the llama_context.
        out_idx: the batch index of each row's output.
        width: every row's count where it is known (the shared cut's :data:`K`: one graph
            build cuts all of its rows or none, so the first row's count stands for all);
            None reads each row's count.

    Raises:
        GenerationError: a row came back without candidates (its graph part was not built).
    """
    n = len(out_idx)
    llama_cpp.llama_synchronize(ctx)  # the wait for the device, without the GIL
    if width is None:
        counts = [int(_count_ith(ctx, i)) for i in out_idx]
        width = max(counts, default=0)
        vals = np.full((n, width), -np.inf, dtype=np.float32)
    else:
        counts = [width if n and _count_ith(ctx, out_idx[0]) == width else 0] * n
        vals = np.empty((n, width), dtype=np.float32)
    ids = np.zeros((n, width), dtype=np.int32)
    vp, ip = vals.ctypes.data, ids.ctypes.data
    for j, (i, c) in enumerate(zip(out_idx, counts, strict=True)):
        lp, cp = _logits_ith(ctx, i), _candidates_ith(ctx, i)
        if not c or not lp or not cp:
            raise GenerationError("llama.cpp returned no sampled candidates for a row")
        _memmove(vp + j * width * 4, lp, c * 4)
        _memmove(ip + j * width * 4, cp, c * 4)
    return vals, ids
