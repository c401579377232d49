"""Embeddings batched in one decode (inputs of one call and of concurrent calls) equal each
input embedded alone; over-long inputs are refused by index or truncated when asked.

"Equal" is within the rounding of other kernel shapes: a batch of 80 tokens takes llama.cpp's
matrix-matrix kernels where one short input takes others (measured on SmolLM2 Q4_1, flash
attention off: cosine >= 0.99999, largest difference 1.4e-3 of a unit vector; a wrong pooling
or a sequence cut apart costs 0.2-0.3)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ggufworker.engine import Engine
from ggufworker.errors import ContextLengthExceededError, InvalidRequestError

TEXTS = [
    f"Sentence number {i} is about {topic}."
    for i, topic in enumerate(
        ["ships", "cats", "rain", "compilers", "bread", "music", "trains", "stars", "tea",
         "chess", "rivers", "glass", "clocks", "maps", "bees", "snow", "salt", "wool",
         "iron", "paper"]
    )
]  # fmt: skip


@pytest.fixture(scope="module")
def embedder(smollm2_path: Path):
    engine = Engine.load(
        smollm2_path,
        n_ctx=512,
        n_parallel=1,
        n_batch=512,
        embedding=True,
        embed_seqs=8,
        flash_attn=False,
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def alone(embedder: Engine) -> np.ndarray:
    return np.array([embedder.embed([t])[0] for t in TEXTS])


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert (got * want).sum(axis=1).min() > 0.99995
    assert np.abs(got - want).max() < 3e-3


def test_many_inputs_share_decodes_and_equal_alone(embedder: Engine, alone: np.ndarray) -> None:
    before = embedder.embed_decodes
    got = np.array(embedder.embed(TEXTS))
    # 20 inputs, 8 sequences per decode
    assert embedder.embed_decodes - before == 3
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    _assert_same(got, alone)


def test_concurrent_requests_share_one_decode(embedder: Engine, alone: np.ndarray) -> None:
    gate = threading.Event()
    blocker = threading.Thread(target=embedder.run_on_scheduler, args=(gate.wait,))
    blocker.start()  # the scheduler thread waits: the jobs below queue up meanwhile
    results: dict[int, list[float]] = {}

    def one(i: int) -> None:
        results[i] = embedder.embed([TEXTS[i]])[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(embedder._embed_queue) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    before = embedder.embed_decodes
    gate.set()
    for t in threads:
        t.join(60)
    blocker.join(60)
    assert embedder.embed_decodes - before == 1
    got = np.array([results[i] for i in range(8)])
    _assert_same(got, alone[:8])


def test_token_ids_equal_text(embedder: Engine, alone: np.ndarray) -> None:
    ids = embedder.tokenize(TEXTS[3])
    result = embedder.embed_inputs([ids, TEXTS[4]])
    assert result.prompt_tokens == len(ids) + len(embedder.tokenize(TEXTS[4]))
    _assert_same(np.array(result.vectors), alone[3:5])
    with pytest.raises(InvalidRequestError, match="input 1 holds token ids outside"):
        embedder.embed_inputs([ids, [embedder.info.n_vocab]])


def test_long_input_refused_by_index_or_truncated(smollm2_path: Path) -> None:
    engine = Engine.load(smollm2_path, n_ctx=64, n_parallel=1, n_batch=32, embedding=True)
    try:
        long_text = " ".join(["word"] * 100)
        with pytest.raises(ContextLengthExceededError, match="input 1 is .* at most 32"):
            engine.embed_inputs(["short", long_text])
        cut = engine.embed_inputs(["short", long_text], truncate=True)
        first_32 = engine.tokenize(long_text)[:32]
        assert cut.prompt_tokens == len(engine.tokenize("short")) + 32
        want = engine.embed_inputs([first_32]).vectors[0]
        assert np.abs(np.array(cut.vectors[1]) - np.array(want)).max() < 1e-5
    finally:
        engine.close()


def test_rerank_needs_a_rank_pooled_model(embedder: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="is not a reranker"):
        embedder.rerank("query", ["doc"])
