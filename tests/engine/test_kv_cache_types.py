"""KV cache element types: a q8_0 cache holds a prompt in about half the memory of the f16
default (llama.cpp's q8_0 stores 34 bytes per 32 values against 64), bad types and a
quantized V cache without flash attention are refused before anything loads, and saved prompt
states are keyed by the types."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufworker.engine import Engine
from ggufworker.engine._native import llama_cpp
from ggufworker.engine.cache_tiers import layout_key
from ggufworker.engine.types import GenerationRequest, SamplingParams
from ggufworker.errors import InvalidRequestError

PROMPT = "A cache of keys and values holds every token the model has read so far. " * 12


def _state_bytes(smollm2_path: Path, kind: str) -> tuple[int, list[int]]:
    """Bytes of the slot states after one prompt, and the greedy tokens it produced."""
    engine = Engine.load(
        smollm2_path,
        n_ctx=1024,
        n_parallel=2,
        flash_attn=True,
        cache_type_k=kind,
        cache_type_v=kind,
    )
    try:
        assert engine.kv_cache_type == f"{kind}/{kind}"
        out = engine.generate(GenerationRequest(PROMPT, SamplingParams(max_tokens=8)))
        ctx = engine._ctx
        size = engine.run_on_scheduler(
            lambda: sum(int(llama_cpp.llama_state_seq_get_size(ctx, s)) for s in range(2))
        )
        return size, list(out.token_ids)
    finally:
        engine.close()


def test_q8_0_cache_halves_the_state(smollm2_path: Path) -> None:
    f16, f16_tokens = _state_bytes(smollm2_path, "f16")
    q8, q8_tokens = _state_bytes(smollm2_path, "q8_0")
    assert 0.45 < q8 / f16 < 0.6, (q8, f16)
    assert len(q8_tokens) == len(f16_tokens) == 8


def test_bad_types_are_refused_before_loading(tmp_path: Path) -> None:
    missing = tmp_path / "never-read.gguf"  # the check runs before the file is opened
    with pytest.raises(InvalidRequestError, match="cache_type_k must be one of f32, f16"):
        Engine.load(missing, cache_type_k="q3_k")
    with pytest.raises(InvalidRequestError, match="q4_0 V cache needs flash attention"):
        Engine.load(missing, cache_type_v="q4_0", flash_attn=False)


def test_saved_states_are_keyed_by_the_types() -> None:
    assert layout_key(unified=True, n_seq=4) == "unified"  # states saved before still match
    assert layout_key(unified=True, n_seq=4, cache_types=("q8_0", "q8_0")) != "unified"
    assert layout_key(unified=False, n_seq=4, cache_types=("f32", "f16")) == "per-slot:4;kv=f32/f16"
