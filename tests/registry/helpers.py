"""Builders and checks shared by the registry tests."""

from __future__ import annotations

import socket
from pathlib import Path

REPO = "acme/tiny-GGUF"


def model_entry(name: str, sources: list[dict], sha: str | None, size: int | None = None) -> dict:
    """A models.yaml entry for ``write_registry``; its cache file is ``<name>.gguf``."""
    return {
        "name": name,
        "architecture": "llama",
        "quantization": "Q4_0",
        "filename": f"{name}.gguf",
        "size": size,
        "sha256": sha,
        "license": "mit",
        "sources": sources,
    }


def hf_source(filename: str, repo: str = REPO) -> dict:
    return {"type": "hf", "repo": repo, "filename": filename}


def leftovers(home: Path) -> list[Path]:
    """Every file under the cache (staging included)."""
    return sorted(p for p in home.rglob("*") if p.is_file()) if home.exists() else []


def closed_port_url() -> str:
    """An http URL of a local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
