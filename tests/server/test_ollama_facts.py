"""Fill-in-the-middle tokens as the Ollama API finds them (for ``/api/show``'s ``insert`` and
``/api/generate``'s ``suffix``), against llama.cpp's own FIM token detection, on real
vocabularies from llama.cpp's collection (DeepSeek-Coder has them, Llama's SentencePiece vocab
has none). SmolLM2, the end-to-end model, has no FIM tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import llama_cpp
import pytest

from converters.verify import vocab_only_model
from ggufworker.errors import InvalidRequestError
from ggufworker.server.ollama.facts import _engine_fim, _gguf_facts
from ggufworker.server.ollama.serving import _fim_prompt


class VocabEngine:
    """Just enough of an engine for FIM: llama.cpp's tokenizer over a vocabulary-only GGUF."""

    def __init__(self, vocab: Any, add_bos: bool) -> None:
        self.vocab = vocab
        self.add_bos = add_bos
        self.info = SimpleNamespace(metadata={})

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False):
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        special = add_special and self.add_bos
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, len(buf), special, parse_special
        )
        return list(buf[:n])


@pytest.fixture(params=["deepseek-coder", "llama-spm"])
def vocab(request: pytest.FixtureRequest, llama_cpp_models_dir: Path) -> Iterator[tuple]:
    path = llama_cpp_models_dir / f"ggml-vocab-{request.param}.gguf"
    with vocab_only_model(path) as model:
        v = llama_cpp.llama_model_get_vocab(model)
        ids = (llama_cpp.llama_vocab_fim_pre(v), llama_cpp.llama_vocab_fim_suf(v),
               llama_cpp.llama_vocab_fim_mid(v))  # fmt: skip
        reference = None if -1 in ids else ids
        yield path, VocabEngine(v, bool(llama_cpp.llama_vocab_get_add_bos(v))), reference


def test_fim_tokens_match_llama_cpp(vocab: tuple) -> None:
    path, engine, reference = vocab
    _, _, from_file = _gguf_facts(str(path), 0, 0)
    assert (from_file or None) == reference  # /api/show of an unloaded model
    assert _engine_fim(engine, {}) == reference  # a loaded model


def test_suffix_prompt_layout(vocab: tuple) -> None:
    path, engine, reference = vocab
    if reference is None:
        with pytest.raises(InvalidRequestError, match="does not support insert"):
            _fim_prompt(engine, "m", "def add(a, b):", "    return c", True)
        return
    pre, suf, mid = reference
    tokens = _fim_prompt(engine, "m", "def add(a, b):", "    return c", True)
    bos = engine.tokenize("", add_special=True)
    body = engine.tokenize("def add(a, b):", add_special=False)
    tail = engine.tokenize("    return c", add_special=False)
    assert tokens == [*bos, pre, *body, suf, *tail, mid]
