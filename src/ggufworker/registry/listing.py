"""What the registry offers and what the cache holds (``ggufworker list``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from ggufworker import paths
from ggufworker.registry.cache import Marker, hf_root, marker_matches, model_path, read_marker
from ggufworker.registry.schema import HfSource, Registry, load_registry


class PartialStatus(BaseModel):
    """A resumable partial download (``ggufworker list --all``)."""

    path: str
    source: str
    sha256: str
    have: int
    size: int | None = None
    age_s: float
    stale: bool
    orphaned: bool
    in_use: bool


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
    partial: PartialStatus | None = None  # with ``--all``


def _cache_state(path: Path, pinned: str | None) -> tuple[bool, bool, int | None, Marker | None]:
    """(cached, verified, size, marker): verified means a marker that still matches the file."""
    marker = read_marker(path)
    try:
        st = path.stat()
    except OSError:
        return False, False, None, marker
    verified = marker is not None and marker_matches(marker, st, pinned)
    return True, verified, st.st_size, marker


def list_models(
    home: Path | None = None,
    registry: Registry | None = None,
    *,
    partials: bool = False,
    max_age_s: float | None = None,
) -> list[ModelStatus]:
    """Registry models with their cache state, then cached files pulled by ``hf://`` reference.

    Nothing is hashed: "verified" reports the marker written when the file was checked, trusted
    while the file's size and mtime are unchanged.

    Args:
        home: cache root; default ``ggufworker.paths.home_dir()``.
        registry: default ``load_registry()``.
        partials: also report partial downloads: on their model's row, or as rows of their
            own when no registry model asks for them (``ggufworker list --all``).
        max_age_s: partials untouched for longer are reported stale (default: gc's limit).

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
    if partials:
        _add_partials(rows, home, registry, max_age_s)
    return rows


def _add_partials(
    rows: list[ModelStatus], home: Path, registry: Registry, max_age_s: float | None
) -> None:
    from ggufworker.registry.gc import DEFAULT_MAX_AGE_S, list_partials

    by_name = {r.name: r for r in rows}
    age = DEFAULT_MAX_AGE_S if max_age_s is None else max_age_s
    for info in list_partials(home, registry, max_age_s=age):
        status = PartialStatus(
            path=str(info.path),
            source=info.source,
            sha256=info.sha256,
            have=info.have,
            size=info.size,
            age_s=round(info.age_s, 1),
            stale=info.stale,
            orphaned=info.orphaned,
            in_use=info.in_use,
        )
        row = by_name.get(info.model or "") or by_name.get(info.source)
        if row is not None and row.partial is None:
            row.partial = status
        else:
            rows.append(
                ModelStatus(name=info.source, size=info.size, sources=[info.source], partial=status)
            )


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


def _partial_state(p: PartialStatus) -> str:
    done = f"{p.have / p.size:.0%}" if p.size else format_size(p.have)
    flags = [
        f for f, on in (("in use", p.in_use), ("orphaned", p.orphaned), ("stale", p.stale)) if on
    ]
    return f"partial {done}" + (f" ({', '.join(flags)})" if flags else "")


def format_table(rows: list[ModelStatus]) -> str:
    """The rows as an aligned text table."""
    header = ("NAME", "ARCH", "QUANT", "SIZE", "CACHED", "PATH")
    lines = [header]
    for r in rows:
        path = r.path or ""
        if r.verified:
            state = "verified"
        elif r.cached:
            state = "unverified"
        elif r.partial is not None:
            state = _partial_state(r.partial)
            path = r.partial.path
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
                path,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    out = []
    for row in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
