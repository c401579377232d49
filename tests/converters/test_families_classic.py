"""Classic decoders (Phi, Falcon, StarCoder 1/2, GPT-2, MPT, StableLM) against transformers.

Each variant is built with transformers' own class (2 layers, non-default dims, every weight
perturbed), converted to f32, f16 and q8_0, and its llama.cpp logits over 40 positions are
compared with transformers'. The f32 file is then served by the engine with continuous batching:
two sequences decoded together must match each decoded alone (greedy). Every check is recorded
for docs/MODEL_SUPPORT.md before it is asserted.

The variants cover the layouts that differ inside a family (Falcon-7B multi-query and the
40B/180B new decoder; MPT with and without clip_qkv, with a non-power-of-2 head count; StableLM
2 12B's per-head q/k norms and parallel residual; GPTBigCode without multi-query; Phi with
partial rotary and GQA) and set the traps llama.cpp's own converter falls into (noted per
entry and checked in :func:`test_written_metadata_follows_the_config`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters.st2gguf import convert
from ggufworker.errors import ConversionError
from tests.support import record

from . import builders
from .reference import hf_logits, llama_logits, rel_err

# Relative max-abs-error bounds (error / largest reference logit magnitude).
TOLERANCE = {"f32": 2e-5, "f16": 1e-2, "q8_0": 8e-2}
# ggml's CPU GELU is the tanh approximation read from a float16 lookup table (GGML_GELU_FP16 in
# ggml-cpu/vec.h): each activation is rounded to float16 (relative 2^-11, ~5e-4), and Falcon and
# MPT use the exact erf GELU in transformers, which the tanh form approximates to ~1e-3 absolute.
# Measured here: 2.5e-4 to 5.5e-4 of the largest logit through two layers.
GELU_F32_TOLERANCE = 1e-3
GELU_FAMILIES = {"phi2", "falcon", "starcoder2", "gpt2", "starcoder", "mpt"}


def _cfg(name: str, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        import transformers

        return getattr(transformers, name)(**{"bos_token_id": 1, "eos_token_id": 2, **kwargs})

    return make


def _edit_config(**changes: Any) -> Callable[[Path], None]:
    """Change config.json after saving (None removes a key)."""

    def edit(src: Path) -> None:
        cfg = json.loads((src / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        (src / "config.json").write_text(json.dumps(cfg))

    return edit


_LN = dict(num_hidden_layers=2, max_position_embeddings=128)
_GPT = dict(n_layer=2, n_embd=64, n_head=4, n_positions=64)

# variant -> (models.yaml family, config factory, edit of the saved checkpoint or None)
FAMILIES: dict[str, tuple[str, Callable[[], Any], Callable[[Path], None] | None]] = {
    # partial rotary (half of each head) and GQA; intermediate_size != 4*hidden (llama.cpp's
    # converter writes 4*hidden and as many KV heads as query heads)
    "phi2": ("phi2", _cfg("PhiConfig", **_LN, hidden_size=64, intermediate_size=160,
                          num_attention_heads=4, num_key_value_heads=2,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "partial_rotary_factor": 0.5}), None),
    # Falcon-7B layout: multi-query, one LayerNorm; the saved config says num_kv_heads=4
    # (transformers fills it in), which llama.cpp's converter takes for the KV head count.
    # rope_theta and ffn_hidden_size off their defaults (llama.cpp's converter drops both).
    "falcon-7b": ("falcon", _cfg("FalconConfig", **_LN, hidden_size=64, num_attention_heads=4,
                                 multi_query=True, new_decoder_architecture=False,
                                 ffn_hidden_size=160,
                                 rope_parameters={"rope_type": "default",
                                                  "rope_theta": 500000.0}), None),
    # Falcon-40B/180B layout: 2 KV groups of 3 query heads, ln_attn + ln_mlp, untied head
    "falcon-40b": ("falcon", _cfg("FalconConfig", **_LN, hidden_size=96, num_attention_heads=6,
                                  num_kv_heads=2, new_decoder_architecture=True,
                                  tie_word_embeddings=False), None),
    # the original multi-head layout (q, k, v per head), under the remote-code class name
    "falcon-rw-mha": ("falcon", _cfg("FalconConfig", **_LN, hidden_size=64,
                                     num_attention_heads=4, multi_query=False,
                                     new_decoder_architecture=False),
                      _edit_config(architectures=["RWForCausalLM"])),
    "starcoder2": ("starcoder2", _cfg("Starcoder2Config", **_LN, hidden_size=64,
                                      intermediate_size=160, num_attention_heads=4,
                                      num_key_value_heads=2, norm_epsilon=1e-5,
                                      rope_parameters={"rope_type": "default",
                                                       "rope_theta": 100000.0}), None),
    # n_inner != 4*n_embd, and no n_ctx key (llama.cpp's converter needs n_ctx, writes 4*n_embd)
    "gpt2": ("gpt2", _cfg("GPT2Config", **_GPT, n_inner=160), None),
    "gpt-bigcode": ("starcoder", _cfg("GPTBigCodeConfig", **_GPT, multi_query=True), None),
    # without multi-query: (q, k, v) per head; llama.cpp's converter writes one KV head anyway
    "gpt-bigcode-mha": ("starcoder", _cfg("GPTBigCodeConfig", **_GPT, multi_query=False,
                                          n_inner=160), None),
    "mpt": ("mpt", _cfg("MptConfig", n_layers=2, d_model=64, n_heads=4, expansion_ratio=3,
                        max_seq_len=128), None),
    # clip_qkv clamps activations (~0.6 std here); 6 heads: ALiBi slopes of a non-power-of-2
    # head count; alibi_bias_max=4 is ignored by transformers (it always uses 8), and so here
    "mpt-clip-6-heads": ("mpt", _cfg("MptConfig", n_layers=2, d_model=96, n_heads=6,
                                     max_seq_len=128,
                                     attn_config={"clip_qkv": 0.5, "alibi_bias_max": 4}), None),
    "stablelm": ("stablelm", _cfg("StableLmConfig", **_LN, hidden_size=64,
                                  intermediate_size=160, num_attention_heads=4,
                                  num_key_value_heads=2, use_qkv_bias=True), None),
    # StableLM 2 12B's layout: per-head q/k LayerNorms, parallel residual; a tied head that
    # llama.cpp still needs as output.weight
    "stablelm-12b-style": ("stablelm", _cfg("StableLmConfig", **_LN, hidden_size=64,
                                            intermediate_size=160, num_attention_heads=4,
                                            num_key_value_heads=2, qk_layernorm=True,
                                            use_parallel_residual=True,
                                            tie_word_embeddings=True), None),
}  # fmt: skip


def f32_tolerance(family: str) -> float:
    return GELU_F32_TOLERANCE if family in GELU_FAMILIES else TOLERANCE["f32"]


@pytest.fixture(scope="module")
def prompt(tiny_tokenizer) -> list[int]:
    from tokenizers import Tokenizer

    n_vocab = Tokenizer.from_file(str(tiny_tokenizer / "tokenizer.json")).get_vocab_size()
    return np.random.default_rng(11).integers(3, n_vocab, size=40).tolist()


@pytest.fixture(scope="module")
def family_files(tmp_path_factory, tiny_tokenizer, prompt):
    """``family_files(variant)`` -> (checkpoint, {outtype: GGUF path}, reference logits)."""

    @functools.cache
    def get(variant: str) -> tuple[Path, dict[str, Path], np.ndarray]:
        family, make_config, edit = FAMILIES[variant]
        root = tmp_path_factory.mktemp(f"classic{list(FAMILIES).index(variant)}")
        src = builders.build_tiny(variant, root / "src", tiny_tokenizer, config=make_config())
        if edit is not None:
            edit(src)
        want = hf_logits(src, prompt)
        outs: dict[str, Path] = {}
        try:
            for outtype in TOLERANCE:
                outs[outtype] = convert(
                    src, root / f"{outtype}.gguf", outtype=outtype, pre_tokenizer="gpt-2"
                )
        except ConversionError as exc:
            record(family, "converter", passed=False, detail=f"{variant}: {exc}")
            raise
        record(family, "converter", passed=True, detail=variant)
        return src, outs, want

    return get


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_logits_match_transformers(variant, family_files, prompt):
    family = FAMILIES[variant][0]
    _src, outs, want = family_files(variant)
    bounds = {**TOLERANCE, "f32": f32_tolerance(family)}
    errors = {}
    for outtype, path in outs.items():
        got = llama_logits(path, prompt)
        errors[outtype] = rel_err(got, want) if got.shape == want.shape else float("inf")
        record(family, outtype, passed=errors[outtype] < bounds[outtype],
               value=errors[outtype], detail=variant)  # fmt: skip
    for outtype, err in errors.items():
        assert err < bounds[outtype], f"{variant} {outtype}: relative error {err:.2e}"


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_engine_batched_equals_alone(variant, family_files, prompt):
    """Two sequences decoded together by the engine equal each decoded alone (greedy)."""
    from ggufworker.engine import Engine, GenerationRequest, SamplingParams

    family = FAMILIES[variant][0]
    _src, outs, _want = family_files(variant)
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    # GPT-2 / GPTBigCode learned 64 positions: prompt + generation stay within them
    prompts = [prompt[:20], prompt[6:36]]
    engine = Engine.load(outs["f32"], n_ctx=256, n_parallel=2, n_batch=64)
    try:
        handles = [engine.submit(GenerationRequest(p, greedy, add_bos=False)) for p in prompts]
        together = [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]
        alone = []
        for p in prompts:
            engine.clear_cache()
            alone.append(engine.generate(GenerationRequest(p, greedy, add_bos=False)).token_ids)
    finally:
        engine.close()
    ok = together == alone and all(len(t) == greedy.max_tokens for t in together)
    record(family, "engine", passed=ok, detail=variant)
    assert together == alone
    assert all(len(t) == greedy.max_tokens for t in together)
