"""The model cache: where finished files live, how they are verified, how they get there.

Layout under the ggufworker home::

    models/<name>/<filename>                 a finished, verified GGUF (registry model)
    models/<name>/<filename>.verified.json   marker: sha256, size, mtime_ns of that file
    models/hf/<owner>/<repo>/<revision>/<filename>   a file pulled by ``hf://`` reference
    staging/partial/<key>/                   a resumable HTTP download (registry.transfer)
    staging/locks/                           inter-process locks of pulls in progress
    staging/<kind>-<random>/                 scratch space of one pull (pip wheels)

A file only ever reaches its final path by ``os.replace`` after its sha256 was checked, so a
finished path never holds a partial or corrupt file. The marker lets a later ``pull`` trust the
file without hashing it again, as long as its size and mtime did not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from tqdm.auto import tqdm

from ggufworker.errors import ChecksumMismatchError, DiskFullError, ModelNotFoundError

if TYPE_CHECKING:
    from ggufworker.registry.schema import HfSource, ModelEntry

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
MARKER_SUFFIX = ".verified.json"
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class Marker:
    """What was verified about a cached file, and when."""

    sha256: str
    size: int
    mtime_ns: int
    source: str = ""


def models_root(home: Path) -> Path:
    """Directory of finished model files under ``home``."""
    return home / "models"


def model_path(home: Path, model: ModelEntry) -> Path:
    """The cache path of a registry model's file."""
    return models_root(home) / model.name / model.filename


def hf_root(home: Path) -> Path:
    """Directory of files pulled by ``hf://`` reference."""
    return models_root(home) / "hf"


def hf_path(home: Path, source: HfSource) -> Path:
    """The cache path of a file pulled by ``hf://`` reference (``source.repo`` is owner/repo)."""
    return hf_root(home) / source.repo / source.revision / source.filename


def staging_root(home: Path) -> Path:
    """Directory for downloads in progress under ``home`` (same file system as the cache)."""
    return home / "staging"


def marker_path(path: Path) -> Path:
    """The marker file that records ``path``'s verified checksum."""
    return path.with_name(path.name + MARKER_SUFFIX)


def read_marker(path: Path) -> Marker | None:
    """The marker of ``path``, or None when missing or unreadable."""
    try:
        data = json.loads(marker_path(path).read_text(encoding="utf-8"))
        return Marker(
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            source=str(data.get("source", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(path: Path, sha256: str, source: str = "") -> Marker:
    """Record that ``path`` (as it is now on disk) has checksum ``sha256``."""
    st = path.stat()
    marker = Marker(sha256=sha256, size=st.st_size, mtime_ns=st.st_mtime_ns, source=source)
    payload = {
        **dataclasses.asdict(marker),
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    target = marker_path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    with disk_full_guard(tmp):
        tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    return marker


def marker_matches(marker: Marker, st: os.stat_result, expected_sha256: str | None) -> bool:
    """True when the file with stat ``st`` is unchanged since ``marker`` was written.

    Unchanged means same size and mtime as recorded; when ``expected_sha256`` is given the
    recorded checksum must also equal it.
    """
    if st.st_size != marker.size or st.st_mtime_ns != marker.mtime_ns:
        return False
    return expected_sha256 is None or marker.sha256 == expected_sha256.lower()


def trusted_marker(path: Path, expected_sha256: str | None = None) -> Marker | None:
    """The marker of ``path`` if the file is unchanged since it was verified (marker_matches)."""
    marker = read_marker(path)
    if marker is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return marker if marker_matches(marker, st, expected_sha256) else None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def has_gguf_magic(path: Path) -> bool:
    """True when ``path`` starts with the GGUF magic bytes."""
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def check_local_gguf(path: Path) -> Path:
    """Return ``path`` if it is a readable GGUF file, else raise ModelNotFoundError."""
    if not path.is_file():
        raise ModelNotFoundError(f"no such file: {path}")
    if not has_gguf_magic(path):
        raise ModelNotFoundError(f"{path} is not a GGUF file (no GGUF magic at its start)")
    return path


def remove_quietly(path: Path) -> None:
    """Delete a file or directory tree if it exists; errors are logged, not raised."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove %s: %s", path, exc)


def remove_cached(path: Path) -> None:
    """Remove a cached file together with its marker."""
    remove_quietly(marker_path(path))
    remove_quietly(path)


@contextlib.contextmanager
def disk_full_guard(*cleanup: Path) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into DiskFullError, removing ``cleanup`` paths first."""
    try:
        yield
    except OSError as exc:
        # a DiskFullError (from a nested guard) has no errno, so it passes through unchanged
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        for path in cleanup:
            remove_quietly(path)
        where = f" {cleanup[0]}" if cleanup else ""
        raise DiskFullError(f"disk full while writing{where}: {exc}") from exc


def byte_progress(total: int | None, desc: str, *, enabled: bool) -> tqdm:
    """A byte-counting progress bar (drawn on stderr, or not at all when disabled)."""
    return tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled
    )


def ensure_free_space(directory: Path, needed: int | None) -> None:
    """Raise DiskFullError when ``directory``'s file system has less than ``needed`` bytes free."""
    if not needed:
        return
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DiskFullError(
            f"not enough disk space in {directory}: need {needed:,} bytes, {free:,} free"
        )


class HashingWriter:
    """A temp file beside ``target`` that hashes what is written; ``commit`` moves it into place.

    Use as a context manager: on any exception the temp file is removed, so nothing partial
    is left behind.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._digest = hashlib.sha256()
        self._file: BinaryIO | None = None
        self.size = 0

    def __enter__(self) -> HashingWriter:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        with disk_full_guard(self.tmp):
            self._file = self.tmp.open("wb")
        return self

    def write(self, data: bytes) -> None:
        assert self._file is not None
        with disk_full_guard(self.tmp):
            self._file.write(data)
        self._digest.update(data)
        self.size += len(data)

    def copy_from(self, src: IO[bytes], progress: Callable[[int], object] | None = None) -> None:
        """Stream ``src`` into the temp file in chunks (never the whole member in memory)."""
        while chunk := src.read(CHUNK_SIZE):
            self.write(chunk)
            if progress is not None:
                progress(len(chunk))

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def commit(self, expected_sha256: str, source: str = "") -> Path:
        """Check the checksum, then atomically move the temp file to the target.

        Raises:
            ChecksumMismatchError: the content does not hash to ``expected_sha256`` (the temp
                file is removed on leaving the ``with`` block; the target is untouched).
        """
        assert self._file is not None
        with disk_full_guard(self.tmp):
            self._file.close()
        actual = self.sha256
        if actual != expected_sha256.lower():
            raise ChecksumMismatchError(
                f"sha256 mismatch for {self.target.name} from {source or 'download'}: "
                f"expected {expected_sha256}, got {actual}"
            )
        return place_verified(self.tmp, self.target, actual, source)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        remove_quietly(self.tmp)


STALE_AFTER_S = 6 * 3600
# kept by sweep_stale: resumable partials (collected by `ggufworker gc`) and live locks
KEPT_STAGING_DIRS = frozenset({"partial", "locks"})


def sweep_stale(home: Path, target: Path, max_age_s: float = STALE_AFTER_S) -> None:
    """Remove work files of downloads that died with their process (kill -9, power loss).

    Live downloads touch their files continuously, so only entries untouched for
    ``max_age_s`` go: scratch folders in staging and ``.<name>.<id>.tmp`` files beside
    ``target``. Resumable partials are left for the next pull (``ggufworker gc`` ages them out).
    """
    cutoff = time.time() - max_age_s
    candidates: list[Path] = []
    if staging_root(home).is_dir():
        candidates += [p for p in staging_root(home).iterdir() if p.name not in KEPT_STAGING_DIRS]
    if target.parent.is_dir():
        candidates += list(target.parent.glob(f".{target.name}.*.tmp"))
    for path in candidates:
        try:
            if path.stat().st_mtime < cutoff:
                logger.info("removing stale download work file %s", path)
                remove_quietly(path)
        except OSError:
            continue


def place_verified(src: Path, target: Path, sha256: str, source: str = "") -> Path:
    """Move an already verified file ``src`` (same file system) to ``target`` and mark it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, target)
    write_marker(target, sha256, source)
    return target
