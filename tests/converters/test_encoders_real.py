"""A real embedding checkpoint (all-MiniLM-L6-v2, from the package index) converted by our
converter equals sentence-transformers' pooling of it in transformers: mean over the tokens,
normalised, as its modules.json says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.st2gguf import convert
from ggufworker.engine import Engine
from tests.real_checkpoints import minilm_l6_v2

from . import encoder_builders as eb

TEXTS = [
    "The cat sat on the mat.",
    "Ships carry containers across the sea.",
    "A compiler turns source code into machine code.",
    "how does a compiler work? Naïve café-style ACCENTS and numbers 12345.",
]


@pytest.fixture(scope="module")
def minilm(model_cache: Path) -> Path:
    return minilm_l6_v2(model_cache)


@pytest.mark.slow
@pytest.mark.parametrize(("outtype", "bar"), [("f32", 0.99999), ("q8_0", 0.999)])
def test_minilm_embeddings_equal_sentence_transformers(minilm, tmp_path, outtype, bar) -> None:
    gguf = convert(minilm, tmp_path / f"minilm.{outtype}.gguf", outtype=outtype)
    want = eb.reference_embeddings("bert", minilm, TEXTS)
    engine = Engine.load(
        gguf, n_ctx=512, n_batch=512, n_parallel=1, embedding=True, embed_seqs=4, flash_attn=False
    )
    try:
        assert engine.pooling is not None and engine.pooling.kind == "mean"
        assert engine.pooling.normalize
        ids = [engine.tokenize(t) for t in TEXTS]
        got = np.array(engine.embed(TEXTS))
    finally:
        engine.close()
    assert ids == [eb.hf_token_ids(minilm, t) for t in TEXTS]
    cos = (got * want).sum(axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= bar, cos
