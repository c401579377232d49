"""PEFT LoRA -> GGUF adapter: llama.cpp with the converted adapter computes what transformers +
peft compute, for a Llama shape (RoPE-permuted q/k, tied embeddings), a Qwen2 shape (q/k/v
biases), a Gemma shape, a Qwen2-MoE shape (attention and the shared expert's MLP; and, in
transformers 5, the routed experts' fused 3-D parameters, which PEFT reaches through
``target_parameters``, also on Mixtral), Phi-3 (fused qkv and gate_up) and GPT-2 (Conv1D
weights, PEFT's fan_in_fan_out)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.lora import convert_lora
from converters.st2gguf import convert
from ggufworker.errors import ConversionError

from . import builders
from .lora_reference import TARGETS, llama_lora_logits, make_adapter, peft_logits
from .reference import random_prompt, rel_err, transformers_config

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4
SCALES = (0.0, 0.5, 1.0)
GELU_BASE_TOLERANCE = 1e-3

FAMILIES = {
    "llama": None,
    "qwen2": None,
    "gemma": None,
    # every expert used (top-4 of 4): routing has no near-ties that tiny differences could flip
    "qwen2moe": transformers_config(
        "Qwen2MoeConfig", **{**builders.TINY, "intermediate_size": 128,
                             "moe_intermediate_size": 64, "shared_expert_intermediate_size": 128,
                             "num_experts": 4, "num_experts_per_tok": 4,
                             "norm_topk_prob": False, "tie_word_embeddings": False}),
    # fused qkv_proj and gate_up_proj, kept fused by the converter
    "phi3": None,
    # Conv1D weights stored (in, out): PEFT's fan_in_fan_out, transposed by the converter
    "gpt2": transformers_config("GPT2Config", n_layer=2, n_embd=64, n_head=4, n_positions=64,
                                n_inner=160, bos_token_id=1, eos_token_id=2),
}  # fmt: skip
#: the projections of families that name them otherwise
TARGET_NAMES = {
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
#: GELU families: ggml reads GELU from a float16 table, so the base alone is ~1e-4 off
GELU = {"gemma", "gpt2"}


#: PEFT 0.22 turns bare gate/up/down targets (even inside a regex) into ``target_parameters`` on
#: transformers 5's fused 3-D expert weights (tested on their own below): this MoE adapter lists
#: the attention projections and the shared expert's MLP by full name.
SCOPES = {"qwen2moe": r"\.(self_attn|shared_expert)\."}


@pytest.fixture(scope="module")
def prompt(tiny_tokenizer) -> list[int]:
    return random_prompt(tiny_tokenizer, 5, 40)


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, tiny_tokenizer, prompt):
    """``lora_files(variant)`` -> (checkpoint, base GGUF, PEFT folder, adapter GGUF, logits by
    scale from transformers + peft)."""

    @functools.cache
    def get(variant: str):
        root = tmp_path_factory.mktemp(f"lora{list(FAMILIES).index(variant)}")
        make = FAMILIES[variant]
        src = builders.build_tiny(
            variant, root / "src", tiny_tokenizer, config=make() if make else None
        )
        base = convert(src, root / "base.gguf", outtype="f32")
        peft_dir = make_adapter(
            src,
            root / "adapter",
            scope=SCOPES.get(variant),
            targets=TARGET_NAMES.get(variant, TARGETS),
        )
        adapter = convert_lora(peft_dir, root / "adapter.gguf", base=src)
        want = peft_logits(src, peft_dir, prompt, SCALES)
        return src, base, peft_dir, adapter, want

    return get


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_adapter_logits_match_peft(variant, lora_files, prompt):
    _src, base, _peft, adapter, want = lora_files(variant)
    # the adapter matters: it moves the logits by order 1
    assert np.max(np.abs(want[1.0] - want[0.0])) > 0.5
    errors = {}
    for scale in SCALES:
        got = llama_lora_logits(base, adapter, prompt, scale)
        errors[scale] = rel_err(got, want[scale])
    plain = rel_err(llama_lora_logits(base, None, prompt, 1.0), want[0.0])
    print(f"{variant}: " + ", ".join(f"scale {s}: {e:.2e}" for s, e in errors.items())
          + f", no adapter: {plain:.2e}")  # fmt: skip
    # GELU (Gemma, GPT-2) is read from a float16 table in ggml (see test_tiny_archs.py), so
    # the base alone is 1e-4..4e-4 from transformers there: the adapter may add at most
    # TOLERANCE to that.
    assert plain < (GELU_BASE_TOLERANCE if variant in GELU else TOLERANCE), plain
    assert max(errors.values()) < plain + TOLERANCE, (errors, plain)


MIXTRAL = transformers_config(
    "MixtralConfig", **{**builders.TINY, "num_local_experts": 4, "num_experts_per_tok": 4,
                        "tie_word_embeddings": False},
)  # fmt: skip


@pytest.mark.parametrize("variant", ["qwen2moe", "mixtral"])
def test_moe_experts_through_target_parameters(variant, lora_files, tiny_tokenizer, prompt,
                                               tmp_path):  # fmt: skip
    """Bare gate/up/down (w1/w3/w2) targets on a MoE: PEFT adapts transformers 5's fused
    expert parameters (``target_parameters``; gate_up at twice the rank, block-diagonal) besides
    any Linear projection; llama.cpp gets per-expert pairs on its stacked ``*_exps`` tensors.
    Every expert is used (top-4 of 4), so routing has no near-ties."""
    import gguf

    if variant == "qwen2moe":
        src, base, *_ = lora_files("qwen2moe")
        targets = TARGETS
    else:
        src = builders.build_tiny("mixtral", tmp_path / "src", tiny_tokenizer, config=MIXTRAL())
        base = convert(src, tmp_path / "base.gguf", outtype="f32")
        targets = ("q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3")
    peft_dir = make_adapter(src, tmp_path / "experts", targets=targets)
    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    assert sorted(cfg["target_parameters"]) == ["down_proj", "gate_up_proj"]
    with pytest.raises(ConversionError, match="needs the base's checkpoint folder"):
        convert_lora(peft_dir, tmp_path / "experts.gguf", base=base)
    adapter = convert_lora(peft_dir, tmp_path / "experts.gguf", base=src)
    shapes = {t.name: tuple(reversed(t.shape)) for t in gguf.GGUFReader(adapter).tensors}
    assert shapes["blk.0.ffn_gate_exps.weight.lora_a"] == (4, 16, 64)
    assert shapes["blk.0.ffn_down_exps.weight.lora_b"][:2] == (4, 64)
    want = peft_logits(src, peft_dir, prompt, (0.0, 0.5, 1.0))
    assert np.max(np.abs(want[1.0] - want[0.0])) > 0.5  # the adapter matters
    errors = {s: rel_err(llama_lora_logits(base, adapter, prompt, s), w) for s, w in want.items()}
    print(f"{variant} experts: " + ", ".join(f"scale {s}: {e:.2e}" for s, e in errors.items()))
    assert max(errors.values()) < TOLERANCE, errors


def test_adapter_gguf_metadata(lora_files):
    import gguf

    _src, base, _peft, adapter, _want = lora_files("llama")
    reader = gguf.GGUFReader(adapter)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0
    assert fields["general.architecture"] == "llama"
    names = {t.name for t in reader.tensors}
    # 7 projections x 2 layers, an A and a B each
    assert len(names) == 2 * 2 * len(TARGETS)
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names


def test_gguf_base_gives_the_same_adapter(lora_files, tmp_path):
    """``--base`` may be the base's GGUF: the plan is rebuilt from its metadata."""
    import gguf

    _src, base, peft_dir, adapter, _want = lora_files("llama")
    again = convert_lora(peft_dir, tmp_path / "again.gguf", base=base)
    a = {t.name: np.array(t.data) for t in gguf.GGUFReader(adapter).tensors}
    b = {t.name: np.array(t.data) for t in gguf.GGUFReader(again).tensors}
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_rslora_and_alpha_pattern_are_folded(lora_files, tiny_tokenizer, prompt, tmp_path):
    """rank-stabilised scaling and per-module alphas become one file alpha plus lora_b factors."""
    src, base, _peft, _adapter, _want = lora_files("llama")
    peft_dir = make_adapter(
        src, tmp_path / "rs", seed=9, use_rslora=True, alpha_pattern={"down_proj": 4}
    )
    adapter = convert_lora(peft_dir, tmp_path / "rs.gguf", base=src)
    want = peft_logits(src, peft_dir, prompt, (1.0,))[1.0]
    err = rel_err(llama_lora_logits(base, adapter, prompt, 1.0), want)
    assert err < TOLERANCE, err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "converters.st2gguf", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_converts(lora_files, tmp_path):
    src, _base, peft_dir, adapter, _want = lora_files("qwen2")
    out = tmp_path / "cli.gguf"
    proc = _cli(str(peft_dir), "--lora", "--base", str(src), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert out.read_bytes() == adapter.read_bytes()


def test_dora_is_refused_with_one_line(lora_files, tmp_path):
    src, *_ = lora_files("llama")
    peft_dir = make_adapter(src, tmp_path / "dora", use_dora=True)
    out = tmp_path / "dora.gguf"
    with pytest.raises(ConversionError, match=r"^DoRA adapters \(use_dora\) cannot be expressed"):
        convert_lora(peft_dir, out, base=src)
    proc = _cli(str(peft_dir), "--lora", "--base", str(src), "-o", str(out))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st2gguf: error: DoRA adapters"), proc.stderr
    assert list(tmp_path.glob("dora.gguf*")) == [] and list(tmp_path.glob(".dora*")) == []


def test_other_base_is_refused(lora_files, tiny_tokenizer, tmp_path):
    """An adapter made on the Llama shape does not convert against the Gemma base (same
    dimensions, other family), nor against a wider Llama (its checkpoint or its GGUF)."""
    _src, _base, peft_dir, _adapter, _want = lora_files("llama")
    other, *_ = lora_files("gemma")
    out = tmp_path / "out" / "wrong.gguf"
    out.parent.mkdir()
    with pytest.raises(ConversionError, match="trained on a LlamaForCausalLM, the base is a gemma"):
        convert_lora(peft_dir, out, base=other)
    wide = builders.build_tiny(
        "llama", tmp_path / "wide", tiny_tokenizer, overrides={"hidden_size": 96}
    )
    with pytest.raises(ConversionError, match="another base"):
        convert_lora(peft_dir, out, base=wide)
    wide_gguf = convert(wide, tmp_path / "wide.gguf", outtype="f32")
    with pytest.raises(ConversionError, match="another base"):
        convert_lora(peft_dir, out, base=wide_gguf)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"lora_bias": True}, "lora_B; llama.cpp's LoRA has no bias"),
        ({"peft_type": "IA3"}, "not a LoRA adapter"),
    ],
)
def test_inexpressible_configs_are_refused(lora_files, tmp_path, edit, message):
    _src, _base, peft_dir, _adapter, _want = lora_files("llama")
    folder = tmp_path / "edited"
    folder.mkdir()
    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, **edit}))
    (folder / "adapter_model.safetensors").symlink_to(peft_dir / "adapter_model.safetensors")
    with pytest.raises(ConversionError, match=message):
        convert_lora(folder, tmp_path / "out.gguf", base=_src)
    assert not (tmp_path / "out.gguf").exists()


def test_lm_head_target_is_refused(lora_files, tmp_path):
    """A LoRA on lm_head makes PEFT save the whole (tied) embedding beside it."""
    src, *_ = lora_files("llama")
    peft_dir = make_adapter(src, tmp_path / "head", targets=("q_proj", "lm_head"))
    with pytest.raises(ConversionError, match="holds a full weight"):
        convert_lora(peft_dir, tmp_path / "head.gguf", base=src)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["llama", "qwen2", "gemma"])
def test_same_logits_as_llama_cpps_converter(variant, lora_files, prompt, model_cache):
    """llama.cpp's own convert_lora_to_gguf.py (the pinned sdist's) on the same PEFT folder:
    its adapter and ours give llama.cpp the same logits."""
    import os

    from tests.llama_cpp_data import llama_cpp_converters

    scripts = llama_cpp_converters(model_cache)
    src, base, peft_dir, adapter, _want = lora_files(variant)
    peer = adapter.with_name("peer.gguf")
    if not peer.is_file():
        env = {**os.environ, "PYTHONPATH": str(scripts / "gguf-py")}
        done = subprocess.run(
            [sys.executable, str(scripts / "convert_lora_to_gguf.py"), "--base", str(src),
             "--outfile", str(peer), "--outtype", "f32", str(peft_dir)],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    for scale in (0.5, 1.0):
        ours = llama_lora_logits(base, adapter, prompt, scale)
        theirs = llama_lora_logits(base, peer, prompt, scale)
        assert rel_err(ours, theirs) < 1e-6, (scale, rel_err(ours, theirs))
