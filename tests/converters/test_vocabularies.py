"""Real BPE vocabularies: pre-tokenizer identification and tokenization vs the HF tokenizer.

llama.cpp ships real vocabularies (``models/ggml-vocab-*.gguf``) with its test texts. Each is
turned into a Hugging Face tokenizer.json by transformers, put in a tiny checkpoint, converted;
the converted file must tokenize llama.cpp's test texts and our varied set like that tokenizer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from converters.st2gguf import convert
from converters.verify import SAMPLE_TEXTS, hf_token_ids, llama_token_ids

from . import builders
from .texts import EXTRA_TEXTS

VOCAB_DIR = Path(
    os.environ.get(
        "GGUFWORKER_LLAMA_CPP_MODELS",
        "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp/models",
    )
)
VOCABS = ("llama-bpe", "qwen2", "gpt-2", "starcoder", "deepseek-coder")


def _vocab_test_texts(name: str) -> list[str]:
    inp = VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp"
    return inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")


@pytest.mark.parametrize("name", VOCABS)
def test_real_bpe_vocabulary(name, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    vocab = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not vocab.is_file():
        pytest.skip(f"{vocab} not found (set GGUFWORKER_LLAMA_CPP_MODELS)")
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    shutil.copy(vocab, tok_dir / "v.gguf")
    AutoTokenizer.from_pretrained(tok_dir, gguf_file="v.gguf").save_pretrained(tok_dir / "hf")
    n_vocab = Tokenizer.from_file(str(tok_dir / "hf" / "tokenizer.json")).get_vocab_size()

    src = builders.build_tiny(
        "llama", tmp_path / "src", tok_dir / "hf",
        overrides={"vocab_size": n_vocab, "hidden_size": 32, "intermediate_size": 32,
                   "num_hidden_layers": 1},
    )  # fmt: skip
    out = convert(src, tmp_path / "m.gguf", outtype="q8_0")
    texts = [*_vocab_test_texts(name), *SAMPLE_TEXTS, *EXTRA_TEXTS]
    want = hf_token_ids(src, texts)
    assert want is not None
    got = llama_token_ids(out, texts)
    for text, w, g in zip(texts, want, got, strict=True):
        assert g == w, f"{name}: tokenization differs for {text!r}"
