"""Fixtures for registry tests: a fake hub on 127.0.0.1 and throw-away models.yaml files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from .fakehub import FakeHub, HubServer

ARCHS = {
    "llama": {"gguf_arch": "llama", "hf_architectures": ["LlamaForCausalLM"], "converter": True}
}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A hub-protocol server; HF_ENDPOINT points at it for the test."""
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


@pytest.fixture
def write_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write a models.yaml with the given models and make it the active registry."""

    def write(models: list[dict], default_model: str | None = None) -> Path:
        data = {
            "version": 1,
            "default_model": default_model or models[0]["name"],
            "architectures": ARCHS,
            "models": models,
        }
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        monkeypatch.setenv("GGUFWORKER_REGISTRY", str(path))
        return path

    return write


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "ggufworker-home"
