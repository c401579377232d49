"""Loading errors, model metadata, and pooled embeddings against plain llama_cpp.Llama."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ggufworker.engine import Engine
from ggufworker.errors import InvalidRequestError, ModelLoadError


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        Engine.load(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError):
        Engine.load(bad)


def test_model_info(smollm2: Engine) -> None:
    info = smollm2.info
    assert info.architecture == "llama"
    assert info.n_ctx == 4096 and info.n_parallel == 8
    assert info.chat_template and "<|im_start|>" in info.chat_template
    (end,) = smollm2.tokenize("<|im_end|>", add_special=False, parse_special=True)
    assert end in info.eos_token_ids
    # User text is never parsed as special: the same characters become several plain tokens.
    assert len(smollm2.tokenize("<|im_end|>", add_special=False, parse_special=False)) > 1
    assert len(smollm2.tokenize("<|im_end|>", add_special=False, parse_special=True)) == 1


def test_embed_matches_llama_cpp(smollm2_path: Path) -> None:
    import llama_cpp

    texts = ["The cat sat on the mat.", "A completely different sentence about ships."]
    # Same attention kernel on both sides (Llama's default is flash attention off; kernels
    # round differently, see docs/ENGINE.md).
    engine = Engine.load(smollm2_path, n_ctx=512, n_parallel=1, embedding=True, flash_attn=True)
    try:
        got = engine.embed(texts)
        backend = engine.info.backend
    finally:
        engine.close()
    ref_model = llama_cpp.Llama(
        str(smollm2_path),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=512,
        flash_attn=True,
        n_gpu_layers=-1,  # Llama keeps every layer on the CPU by default; the engine offloads
        verbose=False,
    )
    try:
        ref = [ref_model.embed(t, normalize=True) for t in texts]
    finally:
        ref_model.close()
    # Llama embeds both texts in one batch, the engine one per decode: on a GPU the batch shape
    # picks other matrix kernels (see tests/engine/agree.py), so allow their rounding there.
    tol = 2e-3 if backend == "gpu" else 1e-5
    for g, r in zip(got, ref, strict=True):
        assert math.isclose(sum(x * x for x in g), 1.0, rel_tol=1e-4)
        assert len(g) == len(r)
        assert max(abs(a - b) for a, b in zip(g, r, strict=True)) < tol


def test_embed_needs_embedding_engine(smollm2: Engine) -> None:
    with pytest.raises(InvalidRequestError):
        smollm2.embed(["hello"])
