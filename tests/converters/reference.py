"""Reference computations for converter tests: transformers (torch) vs llama.cpp logits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np


def llama_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    """Logits llama.cpp computes for every position of ``ids`` (shape: len(ids) x n_vocab)."""
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    llm = llama_cpp.Llama(
        str(gguf_path), n_ctx=max(32, len(ids)), n_batch=max(32, len(ids)),
        n_ubatch=max(32, len(ids)), logits_all=True, n_threads=2, verbose=False,
        type_k=0, type_v=0,  # f32 KV cache: the default f16 cache rounds activations
    )  # fmt: skip
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Logits transformers computes (float32, eager attention) for ``ids``."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0]
    return out.float().numpy()


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float(np.max(np.abs(got - want)) / max(1e-6, float(np.max(np.abs(want)))))
