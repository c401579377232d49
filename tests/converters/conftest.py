"""Fixtures for converter tests: tiny random checkpoints built with transformers configs.

Checkpoints are built once per session (seeded) under a session temp dir; the real-weight
SafeTensors exports (slow to make) are cached beside the session's test models
(``.cache/converters`` in the checkout unless $GGUFWORKER_TEST_CACHE says otherwise).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import builders


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return builders.train_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path):
    """``tiny_checkpoint(arch, dtype="float32")`` -> path of a seeded tiny checkpoint."""
    made: dict[tuple[str, str], Path] = {}

    def get(arch: str, dtype: str = "float32") -> Path:
        key = (arch, dtype)
        if key not in made:
            # neutral folder names: llama.cpp special-cases vocabularies of models named "phi3"
            out = tmp_path_factory.mktemp(f"ckpt{len(made)}")
            made[key] = builders.build_tiny(arch, out, tiny_tokenizer, dtype=dtype)
        return made[key]

    return get


@pytest.fixture(scope="session")
def export_cache(model_cache: Path) -> Path:
    """Where real-weight SafeTensors exports persist between runs (beside the test models)."""
    path = model_cache.parent / "converters"
    path.mkdir(parents=True, exist_ok=True)
    return path
