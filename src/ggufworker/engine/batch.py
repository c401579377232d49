"""A reusable ``llama_batch`` whose arrays are numpy buffers.

llama_batch_init allocates C arrays that Python can only fill element by element through
ctypes; pointing the struct at numpy arrays instead lets a prompt chunk be written with one
slice assignment, and costs nothing per step (the struct is built once).
"""

from __future__ import annotations

import ctypes

import numpy as np

from ggufworker.engine._native import llama_cpp


class Batch:
    """Token batch of capacity ``size``; each token belongs to exactly one sequence."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.token = np.zeros(size, dtype=np.int32)
        self.pos = np.zeros(size, dtype=np.int32)
        self.n_seq_id = np.ones(size, dtype=np.int32)
        self.seq = np.zeros(size, dtype=np.int32)
        self.logits = np.zeros(size, dtype=np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (i32p * size)(*(ctypes.cast(base + 4 * i, i32p) for i in range(size)))
        # ctypes stubs type these fields as arrays; the C struct holds plain pointers.
        b = llama_cpp.llama_batch()
        b.n_tokens = 0
        b.token = self.token.ctypes.data_as(i32p)  # type: ignore[assignment]
        b.embd = ctypes.POINTER(ctypes.c_float)()  # type: ignore[assignment]
        b.pos = self.pos.ctypes.data_as(i32p)  # type: ignore[assignment]
        b.n_seq_id = self.n_seq_id.ctypes.data_as(i32p)  # type: ignore[assignment]
        b.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(i32p))  # type: ignore[assignment]
        b.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))  # type: ignore[assignment]
        self.struct = b
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, output: bool) -> int:
        """Append one token; returns its index in the batch."""
        i = self.n
        self.token[i] = token
        self.pos[i] = pos
        self.seq[i] = seq
        self.logits[i] = output
        self.n = i + 1
        return i

    def add_span(self, tokens: list[int], pos0: int, seq: int, last_output: bool) -> int:
        """Append consecutive tokens of one sequence; returns the index of the last one."""
        i, k = self.n, len(tokens)
        j = i + k
        self.token[i:j] = tokens
        self.pos[i:j] = np.arange(pos0, pos0 + k, dtype=np.int32)
        self.seq[i:j] = seq
        self.logits[i:j] = 0
        self.logits[j - 1] = last_output
        self.n = j
        return j - 1

    def decode(self, ctx: llama_cpp.llama_context_p) -> int:
        """Run ``llama_decode`` on the tokens added since :meth:`clear`; returns its code."""
        self.struct.n_tokens = self.n
        return int(llama_cpp.llama_decode(ctx, self.struct))
