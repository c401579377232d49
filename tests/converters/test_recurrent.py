"""Recurrent and hybrid families: tiny random checkpoint -> f32 GGUF -> logits vs transformers.

Each checkpoint comes from transformers' own class (its CPU reference path for the scans and
convolutions), is converted to f32 and compared over 40 positions: long enough that the
recurrent state, the short convolutions' history and RoPE all matter. llama.cpp computes the
same functions for these families, so the bound is the f32 one (observed: below 2e-6); f16
and q8_0 conversions are held to the dense families' rounding bounds.

Not covered because llama.cpp computes another function: Falcon-H1 with ``mamba_rms_norm`` and
``mamba_norm_before_gate`` (the converter refuses it; see :mod:`converters.archs.falcon_h1`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from converters.st2gguf import convert
from tests.server.conftest import ServerProcess, serving_files
from tests.support import record

from . import builders
from .reference import engine_greedy_text, hf_logits, llama_logits, rel_err

F32_TOLERANCE = 1e-5
N_POSITIONS = 40


def _configs() -> dict[str, tuple[str, object]]:
    """case -> (models.yaml family, transformers config)."""
    import transformers as tf

    hybrid = dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        mamba_n_heads=8,
        mamba_d_head=16,
        mamba_n_groups=2,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=16,
    )
    granite = dict(
        **hybrid,
        intermediate_size=64,
        shared_intermediate_size=96,
        # the names transformers 4 wrote; transformers 5 saves linear/full_attention
        layer_types=["mamba", "attention", "mamba", "attention"],
        embedding_multiplier=2.0,
        residual_multiplier=0.5,
        attention_multiplier=0.2,
        logits_scaling=3.0,
    )
    falcon = dict(
        hybrid,
        num_hidden_layers=2,
        intermediate_size=96,
        head_dim=16,
        mamba_d_ssm=128,
        lm_head_multiplier=0.7,
        embedding_multiplier=1.5,
        mlp_multipliers=[0.8, 1.2],
        key_multiplier=0.6,
        attention_out_multiplier=0.9,
        attention_in_multiplier=1.1,
        ssm_multipliers=[0.5, 1.5, 0.7, 1.3, 0.9],
        ssm_in_multiplier=1.2,
        ssm_out_multiplier=0.8,
    )
    return {
        "mamba": ("mamba", tf.MambaConfig(
            hidden_size=64, intermediate_size=128, state_size=16, num_hidden_layers=2,
            conv_kernel=4, time_step_rank=4,
        )),
        "mamba-untied": ("mamba", tf.MambaConfig(
            hidden_size=64, intermediate_size=128, state_size=16, num_hidden_layers=2,
            time_step_rank=4, tie_word_embeddings=False,
        )),
        "mamba2": ("mamba2", tf.Mamba2Config(
            hidden_size=64, expand=2, num_heads=8, head_dim=16, n_groups=2, state_size=16,
            num_hidden_layers=2, conv_kernel=4, chunk_size=16,
        )),
        "lfm2": ("lfm2", tf.Lfm2Config(
            hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, block_multiple_of=16,
            layer_types=["conv", "full_attention", "conv", "full_attention"],
        )),
        # Granite 4.0 H Micro layout: no routed experts, the shared MLP is the FFN; no RoPE
        "granitehybrid-dense": ("granitehybrid", tf.GraniteMoeHybridConfig(
            **granite, num_local_experts=0,
        )),
        # Granite 4.0 H Tiny layout: routed experts plus the shared expert
        "granitehybrid-moe": ("granitehybrid", tf.GraniteMoeHybridConfig(
            **granite, num_local_experts=4, num_experts_per_tok=2,
        )),
        "granitehybrid-rope": ("granitehybrid", tf.GraniteMoeHybridConfig(
            **granite, num_local_experts=0, position_embedding_type="rope",
        )),
        # Bamba: RoPE on half of each head (partial_rotary_factor 0.5 is BambaConfig's own)
        "bamba": ("granitehybrid", tf.BambaConfig(
            **hybrid, intermediate_size=96, attn_layer_indices=[1, 3],
        )),
        # every µP multiplier set to a distinct value, so each folded factor is checked
        "falcon_h1": ("falcon_h1", tf.FalconH1Config(**falcon)),
        "falcon_h1-gated-norm": ("falcon_h1", tf.FalconH1Config(
            **falcon, mamba_rms_norm=True, mamba_norm_before_gate=False,
        )),
        "falcon_h1-tied": ("falcon_h1", tf.FalconH1Config(**falcon, tie_word_embeddings=True)),
        # attention on layers 1 and 3, MoE (4 experts, top 2) on layers 1 and 3
        "jamba": ("jamba", tf.JambaConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, num_experts=4,
            num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
            attn_layer_period=2, attn_layer_offset=1, mamba_d_state=16, mamba_d_conv=4,
            mamba_expand=2, mamba_dt_rank=4,
        )),
    }  # fmt: skip


CASES = list(_configs())
# Rounding bounds as for the dense families (tests/converters/test_tiny_archs.py).
TOLERANCE = {"f32": F32_TOLERANCE, "f16": 1e-2, "q8_0": 8e-2}
# q8_0 moves the tiny random routers of the MoE cases across near-ties (measured: 0.12 and 0.16
# relative error, from other experts being picked), so those are checked in f16 only.
QUANT_TYPES = {
    case: ("f16",) if case in ("granitehybrid-moe", "jamba") else ("f16", "q8_0") for case in CASES
}


@pytest.fixture(scope="module")
def ids(tiny_tokenizer) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_tokenizer / "tokenizer.json"))
    text = tok.encode("def convert(src, dst, *, outtype='auto', force=False):").ids
    rng = np.random.default_rng(7)
    return (text + rng.integers(3, tok.get_vocab_size(), size=N_POSITIONS).tolist())[:N_POSITIONS]


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case, ids, tiny_tokenizer, tmp_path):
    family, config = _configs()[case]
    try:
        src = builders.build_tiny(case, tmp_path / "src", tiny_tokenizer, config=config)
        out = convert(src, tmp_path / "out.gguf", outtype="f32", pre_tokenizer="gpt-2")
    except Exception:
        record(family, "converter", passed=False, detail=case)
        raise
    record(family, "converter", passed=True, detail=case)
    got, want = llama_logits(out, ids), hf_logits(src, ids)
    errors = {"f32": rel_err(got, want)}
    assert got.shape == want.shape == (N_POSITIONS, want.shape[1])
    for outtype in QUANT_TYPES[case]:
        quant = convert(src, tmp_path / f"{outtype}.gguf", outtype=outtype, pre_tokenizer="gpt-2")
        errors[outtype] = rel_err(llama_logits(quant, ids), want)
    for outtype, err in errors.items():
        record(family, outtype, passed=err < TOLERANCE[outtype], value=err, detail=case)
    for outtype, err in errors.items():
        assert err < TOLERANCE[outtype], f"{case} {outtype}: relative error {err:.2e}"


def test_falcon_h1_norm_before_gate_is_refused(tiny_tokenizer, tmp_path):
    """transformers norms before gating here, llama.cpp after (measured: relative error ~1)."""
    import transformers as tf

    from ggufworker.errors import ConversionError

    config = tf.FalconH1Config(
        hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16,
        mamba_n_groups=2, mamba_d_state=16, mamba_rms_norm=True, mamba_norm_before_gate=True,
    )  # fmt: skip
    src = builders.build_tiny("falcon_h1", tmp_path / "src", tiny_tokenizer, config=config)
    target = tmp_path / "out.gguf"
    with pytest.raises(ConversionError, match="norm_before_gate"):
        convert(src, target, outtype="f32", pre_tokenizer="gpt-2")
    assert not target.exists()


# --- served through a real `ggufworker serve` and the openai client ----------------------------

SERVED = ("mamba", "mamba2", "lfm2", "granitehybrid-moe", "falcon_h1", "jamba")
SERVED_PROMPTS = ("def convert(src, dst):", "The output is written to a temporary file")
MAX_TOKENS = 10
MEMORY = {"mamba": "recurrent", "mamba2": "recurrent"}  # the others are hybrid


@pytest.fixture(scope="module")
def served_files(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """case -> its f32 GGUF (named after the case: the served model name)."""
    files = {}
    configs = _configs()
    for case in SERVED:
        root = tmp_path_factory.mktemp(f"served-{case}")
        src = builders.build_tiny(case, root / "src", tiny_tokenizer, config=configs[case][1])
        files[case] = convert(src, root / f"{case}.gguf", outtype="f32", pre_tokenizer="gpt-2")
    return files


@pytest.fixture(scope="module")
def server(served_files, model_cache, tmp_path_factory) -> Iterator[ServerProcess]:
    with serving_files(
        tmp_path_factory, "recurrent-families", model_cache, served_files, "--parallel", "4"
    ) as proc:
        yield proc


@pytest.mark.slow
@pytest.mark.parametrize("case", SERVED)
def test_served_greedy_equals_alone_and_engine(case, server, served_files):
    import openai

    family = _configs()[case][0]
    model = served_files[case].stem

    async def complete(client: openai.AsyncOpenAI, prompt: str):
        return await client.completions.create(
            model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
            extra_body={"ignore_eos": True},
        )  # fmt: skip

    async def run() -> tuple[list, list, list]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        together = await asyncio.gather(*(complete(client, p) for p in SERVED_PROMPTS))
        alone = [await complete(client, p) for p in SERVED_PROMPTS]
        listed = (await client.models.list()).data
        await client.close()
        return list(together), alone, listed

    together, alone, listed = asyncio.run(run())
    want = [engine_greedy_text(served_files[case], p, MAX_TOKENS) for p in SERVED_PROMPTS]
    got_together = [r.choices[0].text for r in together]
    got_alone = [r.choices[0].text for r in alone]
    lengths = [r.usage.completion_tokens for r in together + alone]
    ok = got_together == got_alone == want and lengths == [MAX_TOKENS] * len(lengths)
    record(family, "server", passed=ok, detail=case)
    assert got_together == got_alone == want
    assert lengths == [MAX_TOKENS] * len(lengths)
    card = next(m for m in listed if m.id == model)
    assert (card.model_extra or {}).get("meta", {}).get("memory") == MEMORY.get(case, "hybrid")


def test_mamba_padded_vocab(tiny_tokenizer, ids, tmp_path):
    """Mamba checkpoints pad the embedding past the tokenizer (pad_vocab_size_multiple); the
    GGUF vocabulary gets pad entries up to the embedding's rows, and every row's logit matches."""
    import shutil

    import transformers as tf

    tok = tmp_path / "tok"  # the tokenizer without its size file: the config's size is kept
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer / name, tok / name)
    config = tf.MambaConfig(
        hidden_size=64, intermediate_size=128, state_size=16, num_hidden_layers=2,
        time_step_rank=4, vocab_size=400, pad_vocab_size_multiple=16,
    )  # fmt: skip
    src = builders.build_tiny("mamba", tmp_path / "src", tok, config=config)
    out = convert(src, tmp_path / "out.gguf", outtype="f32", pre_tokenizer="gpt-2")
    got, want = llama_logits(out, ids), hf_logits(src, ids)
    err = rel_err(got, want)
    record("mamba", "f32", passed=err < F32_TOLERANCE, value=err, detail="mamba-padded-vocab")
    assert got.shape == want.shape == (N_POSITIONS, 400)
    assert err < F32_TOLERANCE
