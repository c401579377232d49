"""Partial downloads in the staging area: what is there, and cleaning up what is stale.

A partial is *stale* when no transfer has written to it for longer than an age limit, and
*orphaned* when no registry model asks for it any more (the model is gone from models.yaml, or
now pins another file). Partials of ``hf://`` references pulled by hand are kept until they
are stale. A partial whose lock is held belongs to a pull running now: never removed.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ggufworker import paths
from ggufworker.errors import GGUFWorkerError
from ggufworker.registry.cache import (
    STALE_AFTER_S,
    hf_root,
    model_path,
    remove_quietly,
    staging_root,
    sweep_stale,
)
from ggufworker.registry.locks import try_lock
from ggufworker.registry.schema import Registry, load_registry
from ggufworker.registry.transfer import (
    DATA_NAME,
    PartialMeta,
    locks_root,
    partial_lock,
    partial_root,
    read_meta,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_AGE_S = 7 * 24 * 3600
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidAgeError(GGUFWorkerError, ValueError):
    """An age limit that is not a number with an optional unit."""


def parse_age(text: str) -> float:
    """Seconds in an age such as ``90``, ``90s``, ``30m``, ``6h`` or ``7d``.

    Raises:
        InvalidAgeError: not of that form.
    """
    m = _AGE_RE.match(text.lower())
    if not m:
        raise InvalidAgeError(f"bad age {text!r}: expected a number with s, m, h or d (e.g. 7d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class PartialInfo:
    """One partial download in the staging area."""

    path: Path
    source: str
    sha256: str
    have: int
    size: int | None
    age_s: float
    model: str | None  # the registry model it is for, if any
    stale: bool
    orphaned: bool
    in_use: bool

    @property
    def reason(self) -> str | None:
        """Why ``gc`` removes it (None: kept)."""
        if self.in_use:
            return None
        if self.orphaned:
            return "no model asks for it"
        if self.stale:
            return f"untouched for {self.age_s / 3600:.1f} h"
        return None


def _wanted_by(registry: Registry, meta: PartialMeta, home: Path) -> tuple[str | None, bool]:
    """(model name, orphaned) of a partial download."""
    for model in registry.models:
        for s in model.sources:
            if s.describe() == meta.source and model.sha256 in (None, meta.sha256):
                return model.name, False
    # a pull by hf:// reference is kept until it is stale; a registry model's partial whose
    # model is gone, or now pins another file, is orphaned
    by_reference = Path(meta.target).is_relative_to(hf_root(home))
    return None, not by_reference


def list_partials(
    home: Path | None = None,
    registry: Registry | None = None,
    *,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> list[PartialInfo]:
    """Every partial download under ``home``, with its progress and state.

    Raises:
        RegistryError: models.yaml is broken.
    """
    home = Path(home).expanduser() if home is not None else paths.home_dir()
    registry = registry if registry is not None else load_registry()
    staging = staging_root(home)
    root = partial_root(staging)
    if not root.is_dir():
        return []
    now = time.time()
    out: list[PartialInfo] = []
    for directory in sorted(root.iterdir()):
        if not directory.is_dir():
            continue
        meta = read_meta(directory)
        data = directory / DATA_NAME
        try:
            st = data.stat()
            have, mtime = st.st_size, st.st_mtime
        except OSError:
            have, mtime = 0, directory.stat().st_mtime
        with try_lock(partial_lock(staging, directory.name)) as free:
            in_use = not free
        age = max(0.0, now - mtime)
        if meta is None:  # unreadable: nothing can resume it
            out.append(PartialInfo(directory, "?", "?", have, None, age, None, True, True, in_use))
            continue
        model, orphaned = _wanted_by(registry, meta, home)
        out.append(
            PartialInfo(
                path=directory,
                source=meta.source,
                sha256=meta.sha256,
                have=have,
                size=meta.size,
                age_s=age,
                model=model,
                stale=age > max_age_s,
                orphaned=orphaned,
                in_use=in_use,
            )
        )
    return out


@dataclass
class GcReport:
    """What ``collect_garbage`` removed (or would remove, in a dry run)."""

    removed: list[PartialInfo] = field(default_factory=list)
    kept: list[PartialInfo] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(p.have for p in self.removed)


def collect_garbage(
    home: Path | None = None,
    registry: Registry | None = None,
    *,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    dry_run: bool = False,
) -> GcReport:
    """Remove stale and orphaned partial downloads, and dead pulls' scratch files.

    Args:
        home: cache root; default ``ggufworker.paths.home_dir()``.
        registry: default ``load_registry()``.
        max_age_s: a partial untouched for longer is stale.
        dry_run: report only.

    Raises:
        RegistryError: models.yaml is broken.
    """
    home = Path(home).expanduser() if home is not None else paths.home_dir()
    registry = registry if registry is not None else load_registry()
    staging = staging_root(home)
    report = GcReport()
    for info in list_partials(home, registry, max_age_s=max_age_s):
        if info.reason is None:
            report.kept.append(info)
            continue
        if not dry_run:
            with try_lock(partial_lock(staging, info.path.name)) as free:
                if not free:  # a pull started meanwhile
                    report.kept.append(info)
                    continue
                logger.info("removing partial %s of %s: %s", info.path, info.source, info.reason)
                remove_quietly(info.path)
        report.removed.append(info)
    if not dry_run:
        # scratch folders and temp files of pulls that died (never those of live ones)
        for model in registry.models:
            sweep_stale(home, model_path(home, model), STALE_AFTER_S)
        # lock files of killed pulls: a lock nobody holds is removed by taking it
        locks = locks_root(staging)
        for path in sorted(locks.glob("*.lock")) if locks.is_dir() else []:
            with try_lock(path):
                pass
    return report
