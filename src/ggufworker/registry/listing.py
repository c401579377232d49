"""What the registry offers and what the cache holds (``ggufworker list``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from ggufworker import paths
from ggufworker.registry.cache import Marker, hf_root, marker_matches, model_path, read_marker
from ggufworker.registry.schema import HfSource, Registry, load_registry


class ModelStatus(BaseModel):
    """One row of ``ggufworker list``."""

    name: str
    architecture: str | None = None
    quantization: str | None = None
    license: str | None = None
    size: int | None = None
    sha256: str | None = None
    default: bool = False
    cached: bool = False
    verified: bool = False
    path: str | None = None
    cached_size: int | None = None
    sources: list[str] = []


def _cache_state(path: Path, pinned: str | None) -> tuple[bool, bool, int | None, Marker | None]:
    """(cached, verified, size, marker): verified means a marker that still matches the file."""
    marker = read_marker(path)
    try:
        st = path.stat()
    except OSError:
        return False, False, None, marker
    verified = marker is not None and marker_matches(marker, st, pinned)
    return True, verified, st.st_size, marker


def list_models(home: Path | None = None, registry: Registry | None = None) -> list[ModelStatus]:
    """Registry models with their cache state, then cached files pulled by ``hf://`` reference.

    Nothing is hashed: "verified" reports the marker written when the file was checked, trusted
    while the file's size and mtime are unchanged.

    Args:
        home: cache root; default ``ggufworker.paths.home_dir()``.
        registry: default ``load_registry()``.

    Raises:
        RegistryError: models.yaml is broken.
    """
    home = Path(home).expanduser() if home is not None else paths.home_dir()
    registry = registry if registry is not None else load_registry()
    rows: list[ModelStatus] = []
    for model in registry.models:
        path = model_path(home, model)
        cached, verified, size, _marker = _cache_state(path, model.sha256)
        rows.append(
            ModelStatus(
                name=model.name,
                architecture=model.architecture,
                quantization=model.quantization,
                license=model.license,
                size=model.size,
                sha256=model.sha256,
                default=model.name == registry.default_model,
                cached=cached,
                verified=verified,
                path=str(path) if cached else None,
                cached_size=size,
                sources=[s.describe() for s in model.sources],
            )
        )
    root = hf_root(home)
    if root.is_dir():
        for path in sorted(root.rglob("*.gguf")):
            rel = path.relative_to(root).parts  # owner, repo, revision, *filename
            if len(rel) < 4:
                continue
            name = HfSource.model_construct(  # no validation: a stray folder must not raise
                repo=f"{rel[0]}/{rel[1]}", revision=rel[2], filename="/".join(rel[3:])
            ).describe()
            cached, verified, size, marker = _cache_state(path, None)
            rows.append(
                ModelStatus(
                    name=name,
                    size=size,
                    sha256=marker.sha256 if marker else None,
                    cached=cached,
                    verified=verified,
                    path=str(path),
                    cached_size=size,
                    sources=[name],
                )
            )
    return rows


def format_size(n: int | None) -> str:
    """Human size: 98.4 MB."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def format_table(rows: list[ModelStatus]) -> str:
    """The rows as an aligned text table."""
    header = ("NAME", "ARCH", "QUANT", "SIZE", "CACHED", "PATH")
    lines = [header]
    for r in rows:
        if r.verified:
            state = "verified"
        elif r.cached:
            state = "unverified"
        else:
            state = "-"
        name = r.name + (" (default)" if r.default else "")
        lines.append(
            (
                name,
                r.architecture or "-",
                r.quantization or "-",
                format_size(r.cached_size if r.cached else r.size),
                state,
                r.path or "",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    out = []
    for row in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
