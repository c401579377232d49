"""SentencePiece ``tokenizer.model`` (Llama-2-style BPE with byte fallback) -> GGUF vocabulary.

The protobuf is read without the sentencepiece package; the reference here is sentencepiece
itself, which defines how a tokenizer.model tokenizes.
"""

from __future__ import annotations

import pytest

from converters.st2gguf import convert
from converters.verify import SAMPLE_TEXTS, check_tokenization, llama_token_ids

from . import builders
from .reference import hf_logits, llama_logits, rel_err

spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def spm_checkpoint(tiny_tokenizer, tmp_path_factory):
    src = builders.build_tiny(
        "llama", tmp_path_factory.mktemp("spm"), tiny_tokenizer, overrides={"vocab_size": 1024}
    )
    (src / "tokenizer.json").unlink()
    (src / "tokenizer_config.json").unlink()
    lines = []
    for path in sorted((builders.REPO / "converters").rglob("*.py")):
        lines += [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    lines += list(SAMPLE_TEXTS)
    # Llama 2's settings: BPE, byte fallback, no normalisation, a dummy prefix space.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(src / "tokenizer"), vocab_size=1000,
        model_type="bpe", byte_fallback=True, character_coverage=0.9995,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, minloglevel=2,
    )  # fmt: skip
    (src / "tokenizer.vocab").unlink()
    return src


def test_tokenizer_model_tokenizes_like_sentencepiece(spm_checkpoint, tmp_path):
    out = convert(spm_checkpoint, tmp_path / "spm.gguf", outtype="f16", verify=True)
    sp = spm.SentencePieceProcessor(model_file=str(spm_checkpoint / "tokenizer.model"))
    got = llama_token_ids(out, SAMPLE_TEXTS)
    for text, ids in zip(SAMPLE_TEXTS, got, strict=True):
        assert ids == [sp.bos_id(), *sp.encode(text)], f"differs for {text!r}"
    # --verify uses the same sentencepiece reference when there is no tokenizer.json
    assert check_tokenization(out, spm_checkpoint) == len(SAMPLE_TEXTS)


def test_tokenizer_model_checkpoint_logits(spm_checkpoint, tmp_path):
    out = convert(spm_checkpoint, tmp_path / "spm32.gguf", outtype="f32")
    ids = list(range(3, 40))
    assert rel_err(llama_logits(out, ids), hf_logits(spm_checkpoint, ids)) < 2e-5
