"""Session-scoped engines on the real test models (small contexts keep the suite fast)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ggufworker.engine import Engine
from ggufworker.engine.model import Model


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path) -> Iterator[Engine]:
    """SmolLM2 with 8 slots, shared by the tests that do not need a fresh engine."""
    engine = Engine.load(smollm2_path, n_ctx=4096, n_parallel=8, n_batch=512)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smollm2_model(smollm2_path: Path) -> Iterator[Model]:
    """SmolLM2's weights for reference decoders that build their own context."""
    model = Model(smollm2_path)
    yield model
    model.close()
