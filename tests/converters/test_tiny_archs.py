"""Every supported architecture: tiny random checkpoint -> GGUF -> llama.cpp logits vs transformers.

f32 output must match tightly; f16/bf16/q8_0 within a tolerance that fits the type's rounding.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from converters.st2gguf import convert
from tests.support import record

from . import builders
from .builders import ARCHS
from .reference import hf_logits, llama_logits, rel_err

# Relative max-abs-error bounds (error / largest reference logit magnitude).
TOLERANCE = {"f32": 2e-5, "f16": 1e-2, "bf16": 4e-2, "q8_0": 8e-2}
# ggml's CPU GELU reads a float16 lookup table (GGML_GELU_FP16 in ggml-cpu/vec.h), so the
# GELU models (Gemma) cannot match float32 transformers closer than about 1e-4.
GELU_F32_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_tokenizer / "tokenizer.json"))
    texts = ["def convert(src, dst):", "The output is written to a temporary file beside it."]
    rng = np.random.default_rng(7)
    random_ids = rng.integers(3, tok.get_vocab_size(), size=40).tolist()
    return [tok.encode(t).ids for t in texts] + [random_ids]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, prompts):
    @functools.cache
    def get(arch: str) -> list[np.ndarray]:
        return [hf_logits(tiny_checkpoint(arch), ids) for ids in prompts]

    return get


@pytest.mark.parametrize("outtype", list(TOLERANCE))
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(arch, outtype, tiny_checkpoint, reference, prompts, tmp_path):
    src = tiny_checkpoint(arch)
    out = convert(src, tmp_path / f"{arch}.{outtype}.gguf", outtype=outtype, pre_tokenizer="gpt-2")
    tol = TOLERANCE[outtype]
    if outtype == "f32" and arch.startswith("gemma"):
        tol = GELU_F32_TOLERANCE
    errors = []
    for ids, want in zip(prompts, reference(arch), strict=True):
        got = llama_logits(out, ids)
        errors.append(rel_err(got, want) if got.shape == want.shape else float("inf"))
    family = "gemma3" if arch == "gemma3-mm" else arch  # models.yaml architecture key
    record(family, outtype, passed=max(errors) < tol, value=max(errors), detail=arch)
    assert max(errors) < tol, f"{arch} {outtype}: relative error {max(errors):.2e}"


def test_bf16_source_is_copied_bit_exact(tiny_checkpoint, prompts, tmp_path):
    """A bf16 checkpoint at outtype auto keeps its bf16 bits; logits match the bf16 weights."""
    import gguf
    from safetensors import safe_open

    src = tiny_checkpoint("llama", "bfloat16")
    out = convert(src, tmp_path / "bf16.gguf", pre_tokenizer="gpt-2")
    reader = gguf.GGUFReader(out)
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert embd.tensor_type == gguf.GGMLQuantizationType.BF16
    with safe_open(src / "model.safetensors", framework="pt") as f:
        import torch

        want_bits = f.get_tensor("model.embed_tokens.weight").view(torch.int16).numpy()
    assert np.array_equal(np.asarray(embd.data).view(np.int16).reshape(want_bits.shape), want_bits)
    for ids in prompts:
        err = rel_err(llama_logits(out, ids), hf_logits(src, ids))
        assert err < 2e-2, f"bf16 source: relative error {err:.2e}"


VARIANTS = {
    "llama-qkv-bias-wide-heads": ("llama", {"attention_bias": True, "head_dim": 32,
                                            "tie_word_embeddings": False}),
    "llama-linear-rope": ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                        "rope_theta": 10000.0}}),
    "mistral-narrow-heads": ("mistral", {"head_dim": 8}),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
    "phi-partial-rotary": ("phi3", {"partial_rotary_factor": 0.5}),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_variants_f32(variant, tiny_tokenizer, tmp_path):
    """Biases (permuted with q/k), head_dim != hidden/heads, linear RoPE, ties, partial RoPE."""
    arch, overrides = VARIANTS[variant]
    src = builders.build_tiny(arch, tmp_path / "src", tiny_tokenizer, overrides=overrides)
    out = convert(src, tmp_path / "out.gguf", outtype="f32")
    ids = list(range(3, 43))
    err = rel_err(llama_logits(out, ids), hf_logits(src, ids))
    assert err < TOLERANCE["f32"], f"{variant}: relative error {err:.2e}"
