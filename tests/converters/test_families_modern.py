"""Dense families beyond Llama/Qwen/Gemma/Phi-3: tiny transformers checkpoint -> GGUF -> llama.cpp.

Each family is built with transformers' own class (2+ layers, non-default dims, every weight
perturbed), converted to f32, f16 and q8_0, and its llama.cpp logits over 40 positions are
compared with transformers'. The f32 file is then served by the engine with continuous
batching: two sequences decoded together must match each decoded alone (greedy). Every check is
recorded for docs/MODEL_SUPPORT.md before it is asserted.

The configs also set the traps llama.cpp's own converter falls into (see each entry): a tied
OLMo 2 head (llama.cpp needs an output tensor), GLM's ``rms_norm_eps`` and context length,
Granite checkpoints without µP keys, an InternLM3 class name. Layouts llama.cpp cannot compute
(EXAONE 4 sliding windows below 64 layers, SmolLM3 NoPE patterns other than every 4th layer,
small Command-R models with q/k norms) must be refused with an error naming the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from converters.st2gguf import convert
from ggufworker.errors import ConversionError
from tests.support import record

from . import builders
from .reference import (
    batched_and_alone,
    family_builder,
    gguf_fields,
    random_prompt,
    recorded_errors,
    transformers_config,
)

# Relative max-abs-error bounds (error / largest reference logit magnitude); same as the
# families of test_tiny_archs.py. No family here uses GELU, so f32 needs no looser bound.
TOLERANCE = {"f32": 2e-5, "f16": 1e-2, "q8_0": 8e-2}

_DIMS = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
    pad_token_id=0,
)  # fmt: skip


def _cfg(name: str, **kwargs: Any) -> Callable[[], Any]:
    return transformers_config(name, **{**_DIMS, **kwargs})


def _drop_keys(*keys: str) -> Callable[[Path], None]:
    """Remove config.json keys after saving: checkpoints that rely on transformers' defaults."""

    def edit(src: Path) -> None:
        cfg = json.loads((src / "config.json").read_text())
        for key in keys:
            cfg.pop(key, None)
        (src / "config.json").write_text(json.dumps(cfg))

    return edit


def _set_arch(name: str) -> Callable[[Path], None]:
    def edit(src: Path) -> None:
        cfg = json.loads((src / "config.json").read_text())
        cfg["architectures"] = [name]
        (src / "config.json").write_text(json.dumps(cfg))

    return edit


# variant -> (models.yaml family, config factory, edit of the saved checkpoint or None)
FAMILIES: dict[str, tuple[str, Callable[[], Any], Callable[[Path], None] | None]] = {
    "olmo": ("olmo", _cfg("OlmoConfig", clip_qkv=3.0), None),
    # tied head: llama.cpp's olmo2 graph requires output.weight, so it is written as a copy
    "olmo2": ("olmo2", _cfg("Olmo2Config", tie_word_embeddings=True), None),
    # sliding window of 8 tokens (shorter than the prompt) on layer 0, full attention on 1
    "olmo3": ("olmo2", _cfg("Olmo3Config", sliding_window=8,
                            layer_types=["sliding_attention", "full_attention"]), None),
    # µP multipliers far from 1, then the same model relying on GraniteConfig's defaults
    "granite": ("granite", _cfg("GraniteConfig", embedding_multiplier=12.0,
                                residual_multiplier=0.22, attention_multiplier=0.0078125,
                                logits_scaling=8.0), None),
    "granite-defaults": ("granite", _cfg("GraniteConfig"), _drop_keys(
        "embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")),
    # GlmConfig's own rms_norm_eps (1.5625e-07); max_position_embeddings > hidden_size
    "glm": ("glm", _cfg("GlmConfig", head_dim=16), None),
    "glm4": ("glm4", _cfg("Glm4Config", head_dim=16), None),
    "command-r": ("command-r", _cfg("CohereConfig", logit_scale=0.125), None),
    "exaone4": ("exaone4", _cfg("Exaone4Config", sliding_window=None,
                                layer_types=["full_attention"] * 2), None),
    # 4 layers: layer 3 has no RoPE
    "smollm3": ("smollm3", _cfg("SmolLM3Config", num_hidden_layers=4), None),
    "ernie4_5": ("ernie4_5", _cfg("Ernie4_5Config", head_dim=24), None),
    # HeliumAttention sizes o_proj by hidden_size, so head_dim must be hidden/heads
    "helium": ("helium", _cfg("HeliumConfig", head_dim=16), None),
    # transformers builds InternLM3 as LlamaForCausalLM; released checkpoints name their class
    "internlm3": ("internlm3", _cfg("InternLM3Config", head_dim=24),
                  _set_arch("InternLM3ForCausalLM")),
    # llama-shaped families as their models configure the Llama class
    "yi": ("yi", _cfg("LlamaConfig", num_key_value_heads=1, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 5e6}), None),
    "deepseek-llm": ("deepseek-llm", _cfg("LlamaConfig", num_key_value_heads=4,
                                          tie_word_embeddings=False), None),
}  # fmt: skip


@pytest.fixture(scope="module")
def prompt(tiny_tokenizer) -> list[int]:
    return random_prompt(tiny_tokenizer, 7)


@pytest.fixture(scope="module")
def family_files(tmp_path_factory, tiny_tokenizer, prompt):
    """``family_files(variant)`` -> (checkpoint, {outtype: GGUF path}, reference logits)."""
    return family_builder(tmp_path_factory, tiny_tokenizer, prompt, FAMILIES, "fam", TOLERANCE)


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_logits_match_transformers(variant, family_files, prompt):
    family = FAMILIES[variant][0]
    _src, outs, want = family_files(variant)
    errors = recorded_errors(family, variant, outs, want, prompt, TOLERANCE)
    for outtype, err in errors.items():
        assert err < TOLERANCE[outtype], f"{variant} {outtype}: relative error {err:.2e}"


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_engine_batched_equals_alone(variant, family_files, prompt):
    """Two sequences decoded together by the engine equal each decoded alone (greedy)."""
    family = FAMILIES[variant][0]
    _src, outs, _want = family_files(variant)
    prompts = [prompt[:24], prompt[8:40]]
    together, alone = batched_and_alone(outs["f32"], prompts, n_ctx=512)
    ok = together == alone and all(len(t) == 12 for t in together)
    record(family, "engine", passed=ok, detail=variant)
    assert ok, f"{variant}: batched {together} != alone {alone}"


def test_written_metadata_follows_the_config(family_files):
    """Where llama.cpp's converter reads other keys or drops them, ours writes the model's own.

    GLM: llama.cpp writes eps 1e-5 (from an absent ``layernorm_epsilon``) and context length =
    hidden_size (no ``seq_length``). Granite without µP keys: llama.cpp writes no
    ``logit_scale``, which its loader requires, so the file does not load. Tied OLMo 2: the
    olmo2 loader requires ``output.weight``.
    """
    import gguf

    src, outs, _ = family_files("glm")
    cfg = json.loads((src / "config.json").read_text())
    glm = gguf_fields(outs["f32"])
    assert glm["chatglm.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    assert glm["chatglm.context_length"] == cfg["max_position_embeddings"] != cfg["hidden_size"]
    granite = gguf_fields(family_files("granite-defaults")[1]["f32"])
    assert granite["granite.logit_scale"] == 1.0
    assert granite["granite.embedding_scale"] == 1.0
    olmo2 = gguf.GGUFReader(family_files("olmo2")[1]["f32"])
    assert "output.weight" in {t.name for t in olmo2.tensors}


REFUSED = {
    # llama.cpp applies EXAONE 4's sliding windows / NoPE layers only to 64-layer models
    "exaone4-swa": (_cfg("Exaone4Config", sliding_window=8,
                         layer_types=["sliding_attention", "full_attention"]), "64-layer"),
    # llama.cpp skips RoPE on every 4th layer only
    "smollm3-nope": (_cfg("SmolLM3Config", num_hidden_layers=4, no_rope_layers=[1, 0, 1, 1]),
                     "every 4th layer"),
    "command-r-qk-norm": (_cfg("CohereConfig", logit_scale=0.125, use_qk_norm=True), "64+"),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(REFUSED))
def test_layouts_llama_cpp_cannot_compute_are_refused(variant, tiny_tokenizer, tmp_path):
    make_config, reason = REFUSED[variant]
    src = builders.build_tiny(variant, tmp_path / "src", tiny_tokenizer, config=make_config())
    with pytest.raises(ConversionError, match=reason):
        convert(src, tmp_path / "out.gguf", outtype="f32")
    assert not (tmp_path / "out.gguf").exists()


def test_missing_config_key_is_named(family_files, tmp_path):
    """Command-R's logits are scaled by ``logit_scale``: a config without it names the key."""
    import shutil

    src = shutil.copytree(family_files("command-r")[0], tmp_path / "src")
    _drop_keys("logit_scale")(src)
    with pytest.raises(ConversionError, match="'logit_scale'"):
        convert(src, tmp_path / "out.gguf", outtype="f32")
    assert not (tmp_path / "out.gguf").exists()


def test_unknown_architecture_names_every_supported_one(family_files, tmp_path):
    import shutil

    from converters.archs import supported_architectures
    from ggufworker.errors import UnsupportedArchitectureError

    src = shutil.copytree(family_files("olmo")[0], tmp_path / "src")
    _set_arch("PersimmonForCausalLM")(src)
    with pytest.raises(UnsupportedArchitectureError) as err:
        convert(src, tmp_path / "out.gguf", outtype="f32")
    message = str(err.value)
    assert "\n" not in message and "'PersimmonForCausalLM'" in message
    ours = ["OlmoForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM", "GraniteForCausalLM",
            "GlmForCausalLM", "Glm4ForCausalLM", "CohereForCausalLM", "Exaone4ForCausalLM",
            "SmolLM3ForCausalLM", "Ernie4_5ForCausalLM", "HeliumForCausalLM",
            "InternLM3ForCausalLM"]  # fmt: skip
    assert set(ours) <= set(supported_architectures())
    assert all(name in message for name in supported_architectures())
    assert not (tmp_path / "out.gguf").exists()
