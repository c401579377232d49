"""The Ollama API tests' server: a real `ggufworker serve` with SmolLM2, a registry of its own
(the packaged one, SmolLM2 and a pull-test model taken from a local file source) and a fresh
cache, so pulls and deletes touch nothing but a temp folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ggufworker.registry.schema import packaged_registry_path
from tests.conftest import SMOLLM2
from tests.server.conftest import COMMON, ServerProcess, running

PULL_NAME = "ollama-pull-test"
PULL_ALIAS = "pulltest:tiny"
BROKEN_NAME = "ollama-broken-pull"  # its only source is a file that does not exist


def _registry(smollm2_path: Path, out: Path) -> Path:
    data = yaml.safe_load(packaged_registry_path().read_text(encoding="utf-8"))
    local = [{"type": "file", "path": str(smollm2_path)}]
    for entry in data["models"]:
        if entry["name"] == SMOLLM2:
            entry["sources"] = local
            pulled = {
                **entry,
                "name": PULL_NAME,
                "aliases": [PULL_ALIAS],
                "filename": "pull-test.gguf",
                "sources": local,
            }
    missing = [{"type": "file", "path": str(out / "missing.gguf")}]
    broken = {**pulled, "name": BROKEN_NAME, "aliases": [], "sources": missing}
    data["models"] += [pulled, broken]
    path = out / "models.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def ollama_server(
    smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """SmolLM2 for generation and embeddings, 8 slots, no pins, keep-alive forever by default."""
    root = tmp_path_factory.mktemp("ollama-server")
    registry = _registry(smollm2_path, root)
    server = ServerProcess(
        [
            *COMMON,
            "--model", SMOLLM2,
            "--embedding-model", SMOLLM2,
            "--parallel", "8",
            "--offline",
            "--home", str(root / "home"),
        ],
        root / "server.log",
        home=root / "home",
        env={"GGUFWORKER_REGISTRY": str(registry)},
    )  # fmt: skip
    with running(server):
        yield server
