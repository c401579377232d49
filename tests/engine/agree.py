"""Comparing greedy token sequences of runs whose batch shapes differ.

llama.cpp's kernels depend on the batch shape: ggml-cpu picks other matrix kernels once a batch
has enough rows, and CUDA multiplies one row and many rows with different kernels. So a token's
logits differ between a run alone and a run among other sequences (by up to ~0.6 for SmolLM2
Q4_1, see ``TIE``), and greedy decoding can take the other branch where the two best tokens
nearly tie (docs/ENGINE.md). Where a test compares such runs the check is: the sequences agree up
to a position where the other run chose the reference's second-best token, within ``TIE`` of
the best; after it the contexts differ and nothing more is compared. A real fault (a wrong
position, another sequence's KV) changes tokens where one candidate clearly wins, and still
fails. Where the shapes are known to give identical logits on the CPU (the eight prompts of
tests/engine/prompts.py batched or alone) the comparison stays exact there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ggufworker.engine import Engine
from ggufworker.engine.model import Model
from ggufworker.engine.reference import raw_greedy

# Logits. Measured here for SmolLM2 Q4_1: the batch shape moved a greedy choice whose
# candidates were 0.26 apart on the CPU and 0.57 apart on an H100 (CUDA picks quantized
# kernels for a row or a few, dequantize + GEMM for more).
TIE = 1.0


def on_gpu(engine: Engine) -> bool:
    """True when the engine runs layers on a GPU (batch-variant kernels)."""
    return engine.info.backend == "gpu"


def logits_after(path: Path, ids: Sequence[int]) -> np.ndarray:
    """The model's logits for the token after ``ids`` (one cold decode)."""
    model = Model(path)
    try:
        return raw_greedy(model, [list(ids)], 1, keep_logits=True).first_logits[0]
    finally:
        model.close()


def assert_greedy_agree(
    engine: Engine,
    prompt: Sequence[int],
    ref: Sequence[int],
    got: Sequence[int],
    what: str,
    *,
    exact: bool | None = None,
) -> bool:
    """``got`` equals the reference greedy continuation ``ref`` of ``prompt``: exactly, or up to
    a near-tie (see the module docstring). ``exact`` defaults to "on the CPU"; pass False when
    the two runs' batches differ by more than the rows' order and count.

    Returns:
        True if the two are identical, False if they parted at a near-tie.
    """
    if list(got) == list(ref):
        return True
    i = next((k for k, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b), None)
    assert i is not None, f"{what}: one output is a prefix of the other ({len(ref)} vs {len(got)})"
    if exact is None:
        exact = not on_gpu(engine)
    assert not exact, f"{what}: token {i} is {got[i]}, expected {ref[i]}"
    logits = logits_after(engine.info.path, list(prompt) + list(ref[:i]))
    gap = float(abs(logits[ref[i]] - logits[got[i]]))
    rank = int((logits > logits[got[i]]).sum()) + 1
    assert gap < TIE, (
        f"{what}: token {i} is {got[i]} (rank {rank} in the reference's logits, {gap:.3f} below "
        f"the best), expected {ref[i]}"
    )
    return False
