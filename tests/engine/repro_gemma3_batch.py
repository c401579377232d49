"""Minimal reproduction: llama.cpp logits of a prompt change when another sequence shares the batch.

Only llama-cpp-python's low-level API, no ggufworker code. Usage:

    python tests/engine/repro_gemma3_batch.py gemma-3-270m-q4_k_m.gguf [--no-repack] [--no-fa]

It decodes prompt A alone, then A plus a second sequence B of k tokens in the same batch (A's
cells and positions are identical in both), and prints the largest difference of A's
next-token logits. With llama-cpp-python 0.3.36 on an AVX-512 CPU and Gemma-3-270m Q4_K_M
(A = 6 tokens): 0 for k=1 and about 0.95 for k>=2, i.e. as soon as the batch has 8 rows or
more; with a prompt A of 8 tokens or more the difference is 0 for every k. So a row's result
depends on how many rows share its batch (kernel selection by shape in ggml-cpu), not on what
the other rows contain. ``--no-repack`` (no repacked weights) still differs (~0.78);
``--no-fa`` is identical in this two-sequence case but not in general (8 prompts still
differ). SmolLM2-135M Q4_1 prints 0 throughout.
"""

from __future__ import annotations

import ctypes
import sys

import llama_cpp
import numpy as np


def main(path: str, repack: bool, flash_attn: bool) -> None:
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = repack
    model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    def tok(text: str) -> list[int]:
        buf = (llama_cpp.llama_token * 256)()
        n = llama_cpp.llama_tokenize(
            vocab, text.encode(), len(text.encode()), buf, 256, True, False
        )
        return list(buf[:n])

    a = tok("The capital of France is")
    b = tok("Lorem ipsum dolor sit amet, consectetur adipiscing elit")

    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 1024, 512, 512, 2
    cp.kv_unified = True
    cp.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        if flash_attn
        else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    ctx = llama_cpp.llama_init_from_model(model, cp)
    mem = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def logits_of_a(k: int) -> np.ndarray:
        llama_cpp.llama_memory_clear(mem, True)
        seqs = [(0, a)] + ([(1, b[:k])] if k else [])
        n = 0
        for seq, toks in seqs:
            for pos, t in enumerate(toks):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = t, pos, 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = pos == len(toks) - 1
                n += 1
        batch.n_tokens = n
        assert llama_cpp.llama_decode(ctx, batch) == 0
        ptr = llama_cpp.llama_get_logits_ith(ctx, len(a) - 1)
        return np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n_vocab,)
        ).copy()

    alone = logits_of_a(0)
    for k in (1, 2, 3, 4, 8):
        diff = float(np.abs(logits_of_a(k) - alone).max())
        print(f"A ({len(a)} tokens) + B ({k} tokens) in one batch: max |logit diff| = {diff:.4f}")
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main(sys.argv[1], repack="--no-repack" not in sys.argv, flash_attn="--no-fa" not in sys.argv)
