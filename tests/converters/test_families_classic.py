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
from .reference import (
    batched_and_alone,
    family_builder,
    gguf_fields,
    hf_logits,
    random_prompt,
    recorded_errors,
    rel_err,
    transformers_config,
)

# Relative max-abs-error bounds (error / largest reference logit magnitude).
TOLERANCE = {"f32": 2e-5, "f16": 1e-2, "q8_0": 8e-2}
# ggml's CPU GELU is the tanh approximation read from a float16 lookup table (GGML_GELU_FP16 in
# ggml-cpu/vec.h): each activation is rounded to float16 (relative 2^-11, ~5e-4), and Falcon and
# MPT use the exact erf GELU in transformers, which the tanh form approximates to 4.7e-4 absolute.
# Measured here: 2.5e-4 to 5.5e-4 of the largest logit through two layers.
GELU_F32_TOLERANCE = 1e-3
GELU_FAMILIES = {"phi2", "falcon", "starcoder2", "gpt2", "starcoder", "mpt"}


def _cfg(name: str, **kwargs: Any) -> Callable[[], Any]:
    return transformers_config(name, **{"bos_token_id": 1, "eos_token_id": 2, **kwargs})


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
    # attn_config.alibi=false: transformers' MptForCausalLM applies ALiBi anyway (llama.cpp's
    # converter would write max_alibi_bias 0, i.e. no position information at all)
    "mpt-alibi-flag-off": ("mpt", _cfg("MptConfig", n_layers=2, d_model=64, n_heads=4,
                                       max_seq_len=128, attn_config={"alibi": False}), None),
    # the MosaicML remote-code class name: attn_config is followed (alibi on, bias 8)
    "mpt-remote-class": ("mpt", _cfg("MptConfig", n_layers=2, d_model=64, n_heads=4,
                                     max_seq_len=128),
                         _edit_config(architectures=["MPTForCausalLM"])),
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
    return random_prompt(tiny_tokenizer, 11)


@pytest.fixture(scope="module")
def family_files(tmp_path_factory, tiny_tokenizer, prompt):
    """``family_files(variant)`` -> (checkpoint, {outtype: GGUF path}, reference logits)."""
    return family_builder(
        tmp_path_factory,
        tiny_tokenizer,
        prompt,
        FAMILIES,
        "classic",
        TOLERANCE,
        pre_tokenizer="gpt-2",
    )


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_logits_match_transformers(variant, family_files, prompt):
    family = FAMILIES[variant][0]
    _src, outs, want = family_files(variant)
    bounds = {**TOLERANCE, "f32": f32_tolerance(family)}
    errors = recorded_errors(family, variant, outs, want, prompt, bounds)
    for outtype, err in errors.items():
        assert err < bounds[outtype], f"{variant} {outtype}: relative error {err:.2e}"


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_engine_batched_equals_alone(variant, family_files, prompt):
    """Two sequences decoded together by the engine equal each decoded alone (greedy)."""
    family = FAMILIES[variant][0]
    _src, outs, _want = family_files(variant)
    # GPT-2 / GPTBigCode learned 64 positions: prompt + generation stay within them
    prompts = [prompt[:20], prompt[6:36]]
    together, alone = batched_and_alone(outs["f32"], prompts, n_ctx=256)
    ok = together == alone and all(len(t) == 12 for t in together)
    record(family, "engine", passed=ok, detail=variant)
    assert ok, f"{variant}: batched {together} != alone {alone}"


def test_written_metadata_follows_the_config(family_files):
    """Where llama.cpp's converter drops, misreads or hard-codes a value, ours writes the model's.

    Falcon-7B: the saved config says ``num_kv_heads`` = heads (transformers fills it in) while
    the layout is multi-query; llama.cpp's converter takes the config value and cannot reshape
    the QKV tensor. It also drops ``rope_theta`` and writes ``4 * hidden`` for the MLP and 2048
    for the context. GPT-2:
    transformers 5 configs have no ``n_ctx`` (llama.cpp's converter needs it) and ``n_inner``
    sets the MLP width. GPTBigCode without multi-query has as many KV heads as query heads
    (llama.cpp's converter: 1). MPT: transformers' MptForCausalLM is ``4 * d_model`` wide and
    uses ALiBi bias 8 whatever the config says. Phi: GQA and the MLP width come from the config
    (llama.cpp's converter: ``n_head`` and ``4 * hidden``). Tied StableLM: output.weight exists.
    """
    import gguf

    src, outs, _ = family_files("falcon-7b")
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["multi_query"] and cfg["num_kv_heads"] == cfg["num_attention_heads"] == 4
    falcon = gguf_fields(outs["f32"])
    assert falcon["falcon.attention.head_count_kv"] == 1
    assert falcon["falcon.rope.freq_base"] == 500000.0
    assert falcon["falcon.feed_forward_length"] == cfg["ffn_hidden_size"] == 160
    assert falcon["falcon.context_length"] == cfg["max_position_embeddings"] == 128
    assert gguf_fields(family_files("falcon-40b")[1]["f32"])["falcon.attention.head_count_kv"] == 2

    src, outs, _ = family_files("gpt2")
    cfg = json.loads((src / "config.json").read_text())
    assert "n_ctx" not in cfg
    gpt2 = gguf_fields(outs["f32"])
    assert gpt2["gpt2.context_length"] == cfg["n_positions"]
    assert gpt2["gpt2.feed_forward_length"] == cfg["n_inner"] != 4 * cfg["n_embd"]

    mha = gguf_fields(family_files("gpt-bigcode-mha")[1]["f32"])
    assert mha["starcoder.attention.head_count_kv"] == mha["starcoder.attention.head_count"] == 4
    assert (
        gguf_fields(family_files("gpt-bigcode")[1]["f32"])["starcoder.attention.head_count_kv"] == 1
    )

    src, outs, _ = family_files("mpt")
    cfg = json.loads((src / "config.json").read_text())
    mpt = gguf_fields(outs["f32"])
    assert mpt["mpt.feed_forward_length"] == 4 * cfg["d_model"] != cfg["expansion_ratio"] * 64
    src, outs, _ = family_files("mpt-clip-6-heads")
    cfg = json.loads((src / "config.json").read_text())
    clipped = gguf_fields(outs["f32"])
    assert cfg["attn_config"]["alibi_bias_max"] == 4
    assert clipped["mpt.attention.max_alibi_bias"] == 8.0
    assert clipped["mpt.attention.clamp_kqv"] == pytest.approx(0.5)
    src, outs, _ = family_files("mpt-alibi-flag-off")
    assert json.loads((src / "config.json").read_text())["attn_config"]["alibi"] is False
    assert gguf_fields(outs["f32"])["mpt.attention.max_alibi_bias"] == 8.0

    phi = gguf_fields(family_files("phi2")[1]["f32"])
    assert phi["phi2.attention.head_count_kv"] == 2
    assert phi["phi2.feed_forward_length"] == 160
    assert phi["phi2.rope.dimension_count"] == 8

    stablelm = gguf.GGUFReader(family_files("stablelm-12b-style")[1]["f32"])
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in stablelm.tensors}
    assert "output.weight" in shapes
    assert shapes["blk.0.attn_q_norm.weight"] == (16, 4)  # {head_dim, n_head}
    assert shapes["blk.0.attn_k_norm.weight"] == (16, 2)
    assert "blk.0.ffn_norm.weight" not in shapes  # parallel residual


def test_mpt_clip_variant_clamps(family_files, prompt, tmp_path):
    """The clip_qkv variant's activations do reach the clamp: without it, logits move."""
    import shutil

    src, _outs, want = family_files("mpt-clip-6-heads")
    unclipped = tmp_path / "unclipped"
    shutil.copytree(src, unclipped)
    cfg = json.loads((unclipped / "config.json").read_text())
    cfg["attn_config"]["clip_qkv"] = None
    (unclipped / "config.json").write_text(json.dumps(cfg))
    assert rel_err(hf_logits(unclipped, prompt), want) > 10 * TOLERANCE["f16"]


def _copy_with_config(src: Path, dst: Path, **changes: Any) -> Path:
    import shutil

    shutil.copytree(src, dst)
    _edit_config(**changes)(dst)
    return dst


def _cli(src: Path, out: Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "converters.st2gguf", str(src), "--outfile", str(out),
         "--outtype", "f32", "--pre-tokenizer", "gpt-2"],
        capture_output=True, text=True, cwd=builders.REPO,
    )  # fmt: skip


def test_missing_config_key_is_named(family_files, tmp_path):
    """GPT-2 without ``n_positions``: one line naming the key, exit 1, nothing written."""
    src = _copy_with_config(family_files("gpt2")[0], tmp_path / "src", n_positions=None)
    with pytest.raises(ConversionError, match="n_positions"):
        convert(src, tmp_path / "a.gguf", outtype="f32", pre_tokenizer="gpt-2")
    proc = _cli(src, tmp_path / "b.gguf")
    assert proc.returncode == 1
    assert "n_positions" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_unknown_tensor_is_named(family_files, tmp_path):
    """A tensor the GPT-2 map does not know: the error names it, exit 1, nothing written."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(family_files("gpt2")[0], src)
    tensors = load_file(src / "model.safetensors")
    tensors["transformer.h.0.attn.rogue_proj.weight"] = np.zeros((4, 4), np.float32)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="rogue_proj"):
        convert(src, tmp_path / "a.gguf", outtype="f32", pre_tokenizer="gpt-2")
    proc = _cli(src, tmp_path / "b.gguf")
    assert proc.returncode == 1
    assert "transformer.h.0.attn.rogue_proj.weight" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


REFUSED = {
    # Falcon-RW-1B's layout: ALiBi, biases, sequential attention/MLP (llama.cpp: none of them)
    "falcon-alibi": ("falcon-7b", {"alibi": True}, "alibi"),
    "falcon-bias": ("falcon-7b", {"bias": True}, "bias"),
    "falcon-sequential": ("falcon-7b", {"parallel_attn": False}, "parallel_attn"),
    "phi-qk-layernorm": ("phi2", {"qk_layernorm": True}, "qk_layernorm"),
    "gpt2-layer-scaled-attention": ("gpt2", {"scale_attn_by_inverse_layer_idx": True},
                                    "scale_attn_by_inverse_layer_idx"),
    "gpt2-relu": ("gpt2", {"activation_function": "relu"}, "activation_function"),
    "mpt-softmax-scale": ("mpt", {"attn_config": {"softmax_scale": 0.5}}, "softmax_scale"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_layouts_llama_cpp_cannot_compute_are_refused(case, family_files, tmp_path):
    variant, changes, reason = REFUSED[case]
    src = _copy_with_config(family_files(variant)[0], tmp_path / "src", **changes)
    with pytest.raises(ConversionError, match=reason):
        convert(src, tmp_path / "out.gguf", outtype="f32", pre_tokenizer="gpt-2")
    assert not (tmp_path / "out.gguf").exists()
