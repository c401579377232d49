"""Real weights: SmolLM2-135M (BPE) and Gemma-3-270m (SentencePiece) round trips.

Each GGUF is turned into a SafeTensors checkpoint by transformers, converted back by us, and
the result must tokenize a varied text set exactly like the HF tokenizer and compute the same
logits as transformers over a few hundred positions of real text (f32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.st2gguf import convert
from converters.verify import SAMPLE_TEXTS, llama_token_ids, vocab_only_model

from . import builders
from .reference import hf_logits, llama_logits, rel_err
from .texts import EXTRA_TEXTS

pytestmark = pytest.mark.slow

TEXTS = SAMPLE_TEXTS + EXTRA_TEXTS


def _real_text() -> str:
    # Natural prose from this repository's own documentation strings.
    import converters.checkpoint
    import converters.st2gguf
    import converters.tokenizer
    import converters.writer

    mods = (converters.st2gguf, converters.tokenizer, converters.checkpoint, converters.writer)
    return "\n\n".join(m.__doc__ or "" for m in mods)


def _gguf_chat_template(path: Path) -> str | None:
    import llama_cpp

    with vocab_only_model(path) as model:
        raw = llama_cpp.llama_model_chat_template(model, None)
    return raw.decode("utf-8") if raw else None


@pytest.fixture(scope="module")
def smollm2_st(export_cache, smollm2_path) -> Path:
    return builders.export_gguf_to_safetensors(Path(smollm2_path), export_cache / "smollm2-135m")


@pytest.fixture(scope="module")
def gemma3_st(export_cache, gemma3_path) -> Path:
    return builders.export_gguf_to_safetensors(Path(gemma3_path), export_cache / "gemma3-270m")


def _check_round_trip(src: Path, tmp_path: Path, n_positions: int) -> None:
    from transformers import AutoTokenizer

    out = convert(src, tmp_path / "model.f32.gguf", outtype="f32", verify=True)

    hf_tok = AutoTokenizer.from_pretrained(src)
    want = [hf_tok(t).input_ids for t in TEXTS]
    got = llama_token_ids(out, TEXTS)
    for text, w, g in zip(TEXTS, want, got, strict=True):
        assert g == w, f"tokenization differs for {text!r}"

    template = src / "chat_template.jinja"
    if template.is_file():
        assert _gguf_chat_template(out) == template.read_text(encoding="utf-8")

    ids = hf_tok(_real_text()).input_ids[:n_positions]
    assert len(ids) == n_positions
    a, b = llama_logits(out, ids), hf_logits(src, ids)
    err = rel_err(a, b)
    agree = float(np.mean(a.argmax(-1) == b.argmax(-1)))
    assert err < 5e-3, f"relative logit error {err:.2e}"
    assert agree > 0.97, f"top-1 agreement {agree:.3f}"


def test_smollm2_round_trip(smollm2_st, tmp_path):
    _check_round_trip(smollm2_st, tmp_path, 256)


@pytest.mark.parametrize(("outtype", "tol"), [("f16", 2e-2), ("q8_0", 5e-2)])
def test_smollm2_reduced_precision_logits(smollm2_st, tmp_path, outtype, tol):
    """Real weights below f32: logits within a tolerance that fits the type (not greedy text:
    near-ties flip under rounding)."""
    from transformers import AutoTokenizer

    out = convert(smollm2_st, tmp_path / f"m.{outtype}.gguf", outtype=outtype)
    ids = AutoTokenizer.from_pretrained(smollm2_st)(_real_text()).input_ids[:128]
    err = rel_err(llama_logits(out, ids), hf_logits(smollm2_st, ids))
    assert err < tol, f"{outtype}: relative logit error {err:.2e}"


def test_gemma3_round_trip(gemma3_st, tmp_path):
    _check_round_trip(gemma3_st, tmp_path, 200)
