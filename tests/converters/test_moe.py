"""Mixture-of-Experts families: tiny transformers checkpoint -> GGUF -> llama.cpp logits.

Each family is built with transformers' own class (4 experts, top-2, a shared expert where the
family has one, every weight perturbed), saved as transformers saves it (per-expert tensors, or
fused for GPT-OSS and Granite), converted to f32, q8_0 and q4_k_m, and compared with
transformers' logits over 48 positions.

Random routers produce near-ties, and a near-tie flips an expert choice under any rounding.
The comparison is made honest about that instead of being loosened: transformers' router inputs
are captured, every position's margin between the k-th and (k+1)-th selection score is computed
(groups included, for DeepSeek-V3), and the asserted positions are the longest prefix whose
margins are all clear (a flip at one position reaches every later one through attention). For
f32 that prefix must hold at least 32 positions and match to 1e-4. Quantized files move router
inputs more, so their clear prefix (margin 5e-2) is held to q8_0's usual 8e-2 and all positions
to a mean cosine similarity; every error is recorded. Routers stay float32 in every type.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters.st2gguf import convert
from ggufworker.errors import ConversionError
from tests.support import record

from . import builders
from .moe_reference import (
    PER_EXPERT,
    clear_prefix,
    edited,
    fuse_experts,
    hf_reference,
    randomize,
    synthetic_mixtral,
)
from .reference import (
    batched_and_alone,
    convert_recorded,
    gguf_fields,
    llama_logits,
    random_prompt,
    rel_err,
    transformers_config,
)

PROMPT_LEN = 48
MIN_CLEAR = 32
# f32: relative error bound (error / largest reference logit magnitude) over the clear prefix,
# with "clear" meaning a router margin above 1e-4 (f32 router logits differ by ~1e-6).
F32_TOLERANCE = 1e-4
F32_MARGIN = 1e-4
# Quantized files move router inputs by ~1e-2, so ties within 5e-2 (in logit units; sigmoid
# scores are 4x flatter) may flip: the prefix before the first such margin is held to the
# type's bound, and all positions to a mean cosine similarity with transformers' logits.
QUANT_TOLERANCE = {"q8_0": 8e-2}
QUANT_MARGIN = 5e-2
MEAN_COSINE = {"q8_0": 0.95, "q4_k_m": 0.8}
OUTTYPES = ("f32", "q8_0", "q4_k_m")

# 256-wide rows so that llama.cpp's K-quants (256-value blocks) apply to the experts themselves.
_DIMS = dict(
    hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    num_experts_per_tok=2,
)  # fmt: skip


def _cfg(name: str, **kwargs: Any) -> Callable[[], Any]:
    return transformers_config(name, **{**_DIMS, **kwargs})


# variant -> (models.yaml family, config factory)
FAMILIES: dict[str, tuple[str, Callable[[], Any]]] = {
    "mixtral": ("mixtral", _cfg("MixtralConfig", intermediate_size=256, num_local_experts=4,
                                tie_word_embeddings=False)),
    "qwen2moe": ("qwen2moe", _cfg("Qwen2MoeConfig", intermediate_size=256,
                                  moe_intermediate_size=256, shared_expert_intermediate_size=512,
                                  num_experts=4, norm_topk_prob=False)),
    "qwen3moe": ("qwen3moe", _cfg("Qwen3MoeConfig", intermediate_size=256,
                                  moe_intermediate_size=256, num_experts=4, head_dim=64,
                                  norm_topk_prob=True)),
    "olmoe": ("olmoe", _cfg("OlmoeConfig", intermediate_size=256, num_experts=4,
                            num_key_value_heads=4)),
    "granitemoe": ("granitemoe", _cfg("GraniteMoeConfig", intermediate_size=256,
                                      num_local_experts=4, embedding_multiplier=6.0,
                                      residual_multiplier=0.5, attention_multiplier=0.0625,
                                      logits_scaling=4.0)),
    "granitemoeshared": ("granitemoe", _cfg("GraniteMoeSharedConfig", intermediate_size=256,
                                            num_local_experts=4, shared_intermediate_size=512,
                                            embedding_multiplier=6.0, residual_multiplier=0.5,
                                            attention_multiplier=0.0625, logits_scaling=4.0)),
    # no q LoRA, one leading dense block, one shared expert, scaled softmax routing
    "deepseek-v2": ("deepseek2", _cfg("DeepseekV2Config", intermediate_size=512,
                                      num_key_value_heads=4, moe_intermediate_size=256,
                                      n_routed_experts=4,
                                      n_shared_experts=1, first_k_dense_replace=1,
                                      kv_lora_rank=64, q_lora_rank=None, qk_nope_head_dim=32,
                                      qk_rope_head_dim=32, v_head_dim=32,
                                      routed_scaling_factor=1.5)),
    # q LoRA, sigmoid routing with the correction bias, 2 groups of which 1 is used
    "deepseek-v3": ("deepseek2", _cfg("DeepseekV3Config", num_hidden_layers=3,
                                      num_key_value_heads=4, intermediate_size=512,
                                      moe_intermediate_size=256,
                                      n_routed_experts=4, n_shared_experts=1,
                                      first_k_dense_replace=1, kv_lora_rank=64, q_lora_rank=96,
                                      qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32,
                                      n_group=2, topk_group=1, routed_scaling_factor=1.5)),
    # default RoPE (the HF default is YaRN x32); window of 8 on the even layers
    "gpt-oss": ("gpt-oss", _cfg("GptOssConfig", intermediate_size=256, num_local_experts=4,
                                head_dim=64, sliding_window=8,
                                rope_parameters={"rope_type": "default",
                                                 "rope_theta": 10000.0})),
    "ernie4_5-moe": ("ernie4_5-moe", _cfg("Ernie4_5_MoeConfig", intermediate_size=512,
                                          moe_intermediate_size=256, moe_num_experts=4, moe_k=2,
                                          moe_num_shared_experts=1, moe_layer_start_index=1,
                                          num_hidden_layers=3, moe_layer_end_index=2)),
}  # fmt: skip


EDITS: dict[str, Callable[[Path], None]] = {
    # sigmoid scores are in (0, 1): a bias of this size changes choices
    "deepseek-v3": lambda src: randomize(src, "e_score_correction_bias", 0.15),
}


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt(tiny_tokenizer) -> list[int]:
    return random_prompt(tiny_tokenizer, 11, PROMPT_LEN)


@pytest.fixture(scope="module")
def family_files(tmp_path_factory, tiny_tokenizer, prompt):
    """``family_files(variant)`` -> (checkpoint, {outtype: GGUF}, reference logits, margins)."""

    @functools.cache
    def get(variant: str):
        family, make_config = FAMILIES[variant]
        root = tmp_path_factory.mktemp(f"moe{list(FAMILIES).index(variant)}")
        src = builders.build_tiny(variant, root / "src", tiny_tokenizer, config=make_config())
        if variant in EDITS:
            EDITS[variant](src)
        want, margins = hf_reference(src, prompt)
        outs = convert_recorded(family, variant, src, root, OUTTYPES)
        return src, outs, want, margins

    return get


# --- tests ------------------------------------------------------------------------------------


#: selection scores squashed by a sigmoid (slope <= 1/4): margins there are 4x smaller
SIGMOID_SCORED = {"deepseek-v3"}


def _cosine(got: np.ndarray, want: np.ndarray) -> float:
    dots = (got * want).sum(-1)
    return float(np.mean(dots / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)))


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_logits_match_transformers(variant, family_files, prompt):
    family = FAMILIES[variant][0]
    _src, outs, want, margins = family_files(variant)
    squash = 0.25 if variant in SIGMOID_SCORED else 1.0
    failures = []
    for outtype, path in outs.items():
        got = llama_logits(path, prompt)
        assert got.shape == want.shape
        whole, cosine = rel_err(got, want), _cosine(got, want)
        if outtype == "f32":
            n = clear_prefix(margins, F32_MARGIN * squash)
            err = rel_err(got[:n], want[:n]) if n else float("inf")
            ok = n >= MIN_CLEAR and err < F32_TOLERANCE
        else:
            n = clear_prefix(margins, QUANT_MARGIN * squash)
            err = rel_err(got[:n], want[:n]) if n else 0.0
            ok = cosine >= MEAN_COSINE[outtype] and err < QUANT_TOLERANCE.get(outtype, np.inf)
        detail = (f"{variant}: {err:.2e} over {n}/{len(prompt)} clear positions; "
                  f"all positions {whole:.2e}, mean cosine {cosine:.4f}")  # fmt: skip
        # detail names the variant only: it is part of the key a later run's record replaces
        record(family, outtype, passed=ok, value=err if n else whole, detail=variant)
        if not ok:
            failures.append(f"{outtype}: {detail}")
    assert not failures, "; ".join(failures)


def test_k_quants_apply_to_experts(family_files):
    """q4_k_m stores the 3-D expert tensors in K-quant types; routers stay float32."""
    import gguf

    _src, outs, _want, _margins = family_files("qwen3moe")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(outs["q4_k_m"]).tensors}
    k_types = {gguf.GGMLQuantizationType[n] for n in ("Q4_K", "Q5_K", "Q6_K")}
    experts = {n: t for n, t in types.items() if "_exps." in n}
    assert len(experts) == 3 * 2
    assert all(t in k_types for t in experts.values()), experts
    assert all(t == gguf.GGMLQuantizationType.F32 for n, t in types.items() if "gate_inp" in n)
    for outtype in ("f32", "q8_0"):
        reader = gguf.GGUFReader(outs[outtype])
        assert all(
            t.tensor_type == gguf.GGMLQuantizationType.F32
            for t in reader.tensors
            if "gate_inp" in t.name
        )


# --- checkpoint layouts -----------------------------------------------------------------------

# variant -> renames from the saved names to transformers 5's in-memory names
LAYOUTS = {
    "mixtral": {".block_sparse_moe.": ".mlp."},
    "qwen2moe": {},
    "granitemoe": {"block_sparse_moe.input_linear.weight": "block_sparse_moe.experts.gate_up_proj",
                   "block_sparse_moe.output_linear.weight": "block_sparse_moe.experts.down_proj",
                   "block_sparse_moe.router.layer.weight": "block_sparse_moe.router.weight"},
}  # fmt: skip


@pytest.mark.parametrize("variant", list(LAYOUTS))
def test_fused_and_per_expert_layouts_convert_alike(variant, family_files, tmp_path):
    """The same weights saved per expert and fused give byte-identical GGUF tensors."""
    import gguf
    from safetensors import safe_open

    src, outs, _want, _margins = family_files(variant)
    fused = fuse_experts(src, tmp_path / "fused", LAYOUTS[variant])
    with safe_open(fused / "model.safetensors", "np") as f:
        names = list(f.keys())
    assert not any(PER_EXPERT.match(n) for n in names)
    assert any(n.endswith("experts.gate_up_proj") for n in names)
    out = convert(fused, tmp_path / "fused.gguf", outtype="f32")
    want = {t.name: t for t in gguf.GGUFReader(outs["f32"]).tensors}
    got = {t.name: t for t in gguf.GGUFReader(out).tensors}
    assert set(got) == set(want)
    for name, tensor in got.items():
        assert tensor.tensor_type == want[name].tensor_type, name
        assert np.array_equal(np.asarray(tensor.data), np.asarray(want[name].data)), name


# --- engine -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_engine_batched_equals_alone(variant, family_files, prompt):
    """Two sequences decoded together by the engine equal each decoded alone (greedy, CPU)."""
    family = FAMILIES[variant][0]
    _src, outs, _want, _margins = family_files(variant)
    prompts = [prompt[:24], prompt[8:40]]
    together, alone = batched_and_alone(outs["f32"], prompts, n_ctx=512)
    ok = together == alone and all(len(t) == 12 for t in together)
    record(family, "engine", passed=ok, detail=variant)
    assert ok, f"{variant}: batched {together} != alone {alone}"


# --- refusals ---------------------------------------------------------------------------------


REFUSED = {
    # llama.cpp's qwen3moe graph always renormalises the top-k weights
    "qwen3moe-unnormalised": ("qwen3moe", {"norm_topk_prob": False}, "renormalisation"),
    # llama.cpp's qwen2moe graph makes every layer sparse
    "qwen2moe-sparse-step": ("qwen2moe", {"decoder_sparse_step": 2}, "every layer"),
    "gpt-oss-swiglu-limit": ("gpt-oss", {"swiglu_limit": 10.0}, "limit 7.0"),
    # pre-quantized in a form no converter repacks
    "gpt-oss-fp8": ("gpt-oss", {"quantization_config": {"quant_method": "fp8"}}, "pre-quantized"),
    "ernie-interleaved": ("ernie4_5-moe", {"moe_layer_interval": 2}, "moe_layer_start_index"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_configs_llama_cpp_cannot_compute_are_refused(case, family_files, tmp_path):
    variant, changes, reason = REFUSED[case]
    src = edited(family_files(variant)[0], tmp_path / "src", **changes)
    with pytest.raises(ConversionError, match=reason):
        convert(src, tmp_path / "out.gguf", outtype="f32")
    assert not (tmp_path / "out.gguf").exists()


def _to_mxfp4(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``(E, rows, cols)`` weights the way OpenAI's MXFP4 checkpoints store them:
    ``(E, rows, cols/32, 16)`` bytes (even element in the low nibble) and e8m0 scales."""
    from transformers.integrations.mxfp4 import FP4_VALUES

    values = np.asarray(FP4_VALUES, dtype=np.float32)
    blocks = weight.reshape(*weight.shape[:-1], -1, 32)
    top = np.abs(blocks).max(-1, keepdims=True)
    exponent = np.ceil(np.log2(np.maximum(top, 1e-30) / 6.0))
    codes = np.abs(blocks[..., None] / 2.0 ** exponent[..., None] - values).argmin(-1)
    codes = codes.astype(np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed, (exponent[..., 0] + 127).astype(np.uint8)


def test_mxfp4_experts_are_repacked(family_files, prompt, tmp_path):
    """An MXFP4 gpt-oss checkpoint converts with MXFP4 experts whose values are exactly those
    transformers' own MXFP4 dequantization gives (checked through gguf-py's dequantizer)."""
    import gguf
    import torch
    from safetensors.numpy import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    src = family_files("gpt-oss")[0]
    packed_dir = edited(src, tmp_path / "mxfp4", quantization_config={"quant_method": "mxfp4"})
    plain_dir = edited(src, tmp_path / "dequantized")
    tensors = load_file(src / "model.safetensors")
    packed, plain = {}, {}
    for name, value in tensors.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = _to_mxfp4(np.ascontiguousarray(value.transpose(0, 2, 1)))
            packed[name + "_blocks"], packed[name + "_scales"] = blocks, scales
            # transformers' dequantization, in its float (E, in, out) layout
            plain[name] = convert_moe_packed_tensors(
                torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32
            ).numpy()
        else:
            packed[name] = plain[name] = value
    save_file(packed, packed_dir / "model.safetensors", metadata={"format": "pt"})
    save_file(plain, plain_dir / "model.safetensors", metadata={"format": "pt"})
    out = convert(packed_dir, tmp_path / "a.gguf")
    got = {t.name: t for t in gguf.GGUFReader(out).tensors}
    want = {t.name: t for t in gguf.GGUFReader(convert(plain_dir, tmp_path / "b.gguf")).tensors}
    assert set(got) == set(want)
    mxfp4 = gguf.GGMLQuantizationType.MXFP4
    experts = [n for n in got if n.endswith("_exps.weight")]
    assert len(experts) == 3 * 2
    for name in experts:
        assert got[name].tensor_type == mxfp4, name
        values = gguf.quants.dequantize(np.asarray(got[name].data), mxfp4)
        expect = np.asarray(want[name].data).reshape(values.shape)
        assert np.array_equal(values, expect), name
    with pytest.raises(ConversionError, match="MXFP4"):  # llama.cpp would requantize them
        convert(packed_dir, tmp_path / "k.gguf", outtype="q4_k_m")
    assert not (tmp_path / "k.gguf").exists()
    # and llama.cpp computes with them: logits close to transformers' on the same values
    want_logits, _margins = hf_reference(plain_dir, prompt)
    cosine = _cosine(llama_logits(out, prompt), want_logits)
    record("gpt-oss", "converter", passed=cosine > MEAN_COSINE["q8_0"], detail="gpt-oss-mxfp4")
    assert cosine > MEAN_COSINE["q8_0"], f"mean cosine {cosine:.4f}"


# --- memory -----------------------------------------------------------------------------------

_RSS_SCRIPT = """
import resource, sys
from converters.st2gguf import convert
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
convert(sys.argv[1], sys.argv[2], outtype="q8_0")
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_conversion_memory_is_bounded_by_one_stacked_tensor(tiny_tokenizer, tmp_path):
    """Peak RSS of a conversion stays far below the checkpoint: experts are stacked lazily.

    200 MB of per-expert weights (four layers of 8 x 3 experts, 16 MiB per stacked tensor) are
    converted in a fresh interpreter; its peak RSS may grow by a third of the checkpoint at most
    (holding one layer's stacked experts at once would exceed that; the writer's own chunk
    window, ~40 MiB here, is the rest).
    """
    import subprocess
    import sys

    src = tmp_path / "src"
    size = synthetic_mixtral(src, tiny_tokenizer, hidden=512, ff=1024, n_expert=8, n_layer=4)
    run = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(src), str(tmp_path / "out.gguf")],
        capture_output=True, text=True, check=True, cwd=builders.REPO,
    )  # fmt: skip
    before, peak = (int(v) * 1024 for v in run.stdout.split()[-2:])
    grown = peak - before
    assert grown < size / 3, f"RSS grew {grown >> 20} MiB for a {size >> 20} MiB checkpoint"


# --- YaRN RoPE as the released models configure it -------------------------------------------

YARN = {
    # DeepSeek-V2-Lite's rope: YaRN x40 with mscale = mscale_all_dim (attention scale unchanged)
    "deepseek-v2": ({"max_position_embeddings": 163840, "rope_parameters": {
        "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
        "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707,
        "rope_theta": 10000.0}}, F32_TOLERANCE),
    # gpt-oss' rope (GptOssConfig's default): YaRN x32, truncate=false. llama.cpp rounds the
    # correction range to whole dimensions (transformers does not with truncate=false), which
    # moves logits by ~3e-3 here: bounded, not hidden.
    "gpt-oss": ({"max_position_embeddings": 131072, "rope_parameters": None}, 5e-3),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(YARN))
def test_yarn_rope_matches_transformers(variant, tiny_tokenizer, prompt, tmp_path):
    family, make_config = FAMILIES[variant]
    changes, tolerance = YARN[variant]
    config = make_config()
    for key, value in changes.items():
        if value is None:  # back to the class default
            value = getattr(type(config)(), key)
        setattr(config, key, value)
    src = builders.build_tiny(variant, tmp_path / "src", tiny_tokenizer, config=config)
    want, margins = hf_reference(src, prompt)
    got = llama_logits(convert(src, tmp_path / "f32.gguf", outtype="f32"), prompt)
    n = clear_prefix(margins, F32_MARGIN)
    err = rel_err(got[:n], want[:n])
    record(family, "f32", passed=n >= MIN_CLEAR and err < tolerance, value=err,
           detail=f"{variant}-yarn")  # fmt: skip
    assert n >= MIN_CLEAR
    assert err < tolerance, f"{variant} YaRN: relative error {err:.2e}"


MTP = {
    # DeepSeek-V3 checkpoints store their multi-token-prediction block as one layer past the end
    "deepseek-v3": ["model.layers.3.eh_proj.weight", "model.layers.3.enorm.weight",
                    "model.layers.3.mlp.experts.0.gate_proj.weight",
                    "model.layers.3.mlp.experts.1.gate_proj.weight"],
    "ernie4_5-moe": ["model.mtp_block.0.mlp.up_proj.weight", "model.mtp_emb_norm.0.weight",
                     "model.mtp_linear_proj.0.weight"],
}  # fmt: skip


@pytest.mark.parametrize("variant", list(MTP))
def test_multi_token_prediction_blocks_are_left_out(variant, family_files, tmp_path):
    import gguf
    from safetensors.numpy import load_file, save_file

    src, outs, _want, _margins = family_files(variant)
    dst = edited(src, tmp_path / "src")
    tensors = load_file(dst / "model.safetensors")
    for name in MTP[variant]:
        tensors[name] = np.ones((8, 8), np.float32)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    out = convert(dst, tmp_path / "out.gguf", outtype="f32")
    names = {t.name for t in gguf.GGUFReader(out).tensors}
    assert names == {t.name for t in gguf.GGUFReader(outs["f32"]).tensors}


def test_bf16_experts_are_stacked_bit_exact(tiny_tokenizer, tmp_path):
    """A bf16 checkpoint's experts keep their exact bits when stacked (no widening/narrowing)."""
    import gguf
    import torch
    from safetensors import safe_open

    _family, make_config = FAMILIES["mixtral"]
    src = builders.build_tiny("mixtral", tmp_path / "src", tiny_tokenizer, config=make_config(),
                              dtype="bfloat16")  # fmt: skip
    out = convert(src, tmp_path / "bf16.gguf")  # outtype auto: the source's bf16
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    with safe_open(src / "model.safetensors", framework="pt") as f:
        for gguf_name, proj in (("ffn_gate_exps", "w1"), ("ffn_up_exps", "w3"),
                                ("ffn_down_exps", "w2")):  # fmt: skip
            want = np.stack([
                f.get_tensor(f"model.layers.1.block_sparse_moe.experts.{e}.{proj}.weight")
                .view(torch.int16).numpy()
                for e in range(4)
            ])  # fmt: skip
            got = tensors[f"blk.1.{gguf_name}.weight"]
            assert got.tensor_type == gguf.GGMLQuantizationType.BF16
            assert np.array_equal(np.asarray(got.data).view(np.int16).reshape(want.shape), want)
    assert tensors["blk.1.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_routing_metadata_follows_the_config(family_files):
    """The keys llama.cpp routes by are the config's, not defaults that happen to fit."""
    import gguf

    def fields(variant: str) -> dict[str, Any]:
        return gguf_fields(family_files(variant)[1]["f32"])

    v3 = fields("deepseek-v3")
    assert v3["deepseek2.expert_count"] == 4 and v3["deepseek2.expert_used_count"] == 2
    assert v3["deepseek2.expert_gating_func"] == int(gguf.ExpertGatingFuncType.SIGMOID)
    assert v3["deepseek2.expert_weights_norm"] is True
    assert v3["deepseek2.expert_weights_scale"] == pytest.approx(1.5)
    assert (v3["deepseek2.expert_group_count"], v3["deepseek2.expert_group_used_count"]) == (2, 1)
    assert v3["deepseek2.leading_dense_block_count"] == 1
    assert v3["deepseek2.attention.q_lora_rank"] == 96
    assert v3["deepseek2.attention.head_count_kv"] == 1
    v2 = fields("deepseek-v2")
    assert v2["deepseek2.expert_gating_func"] == int(gguf.ExpertGatingFuncType.SOFTMAX)
    assert v2["deepseek2.expert_weights_norm"] is False
    assert v2["deepseek2.attention.q_lora_rank"] == 0
    assert "deepseek2.expert_group_count" not in v2
    ernie = fields("ernie4_5-moe")
    assert ernie["ernie4_5-moe.leading_dense_block_count"] == 1
    assert ernie["ernie4_5-moe.expert_shared_feed_forward_length"] == 256 * 1
    qwen2 = fields("qwen2moe")
    assert qwen2["qwen2moe.expert_shared_feed_forward_length"] == 512
    assert qwen2["qwen2moe.expert_feed_forward_length"] == 256
    oss = fields("gpt-oss")
    assert oss["gpt-oss.attention.sliding_window"] == 8
    assert list(oss["gpt-oss.attention.sliding_window_pattern"]) == [True, False]
