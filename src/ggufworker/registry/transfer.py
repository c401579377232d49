"""HTTP downloads that survive the process: resumable partial files in the staging area.

A download of one source for one expected sha256 has one fixed place::

    staging/partial/<key>/data.part     the bytes received so far (a prefix of the file)
    staging/partial/<key>/meta.json     source, expected sha256, upstream validator, size

``key`` is derived from the source and the expected sha256, so a new process (after SIGKILL,
power loss, Ctrl-C or a dropped connection) finds the partial and asks only for the rest with
``Range: bytes=N-``. The sha256 is computed over the whole file (the kept prefix is hashed
again) before the file is moved into the cache. A partial whose upstream changed (another
ETag, size or sha256) is discarded and the transfer starts over. A process works on a partial
only while it holds the partial's lock (see :mod:`ggufworker.registry.locks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufworker.errors import ChecksumMismatchError, DiskFullError, DownloadError
from ggufworker.registry.cache import (
    CHUNK_SIZE,
    byte_progress,
    ensure_free_space,
    place_verified,
    remove_quietly,
)
from ggufworker.registry.locks import file_lock, lock_path, try_lock

logger = logging.getLogger(__name__)

PARTIAL_DIR = "partial"
LOCK_DIR = "locks"
DATA_NAME = "data.part"
META_NAME = "meta.json"
RETRIES = 3
RETRY_DELAY_S = 0.5
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_write_fd = os.write  # one name for the writes to the partial (tests fill the disk through it)


@dataclass(frozen=True)
class Remote:
    """Where the bytes of one source are, and what identifies their current version.

    Attributes:
        url: URL to GET (redirects are followed; credentials are not sent across origins).
        source: the source as the registry describes it (``hf://...``, a URL).
        headers: extra request headers (a hub token).
        validator: ETag (or Last-Modified) of the upstream file; a partial made from another
            version is discarded.
        if_range: send ``validator`` as ``If-Range`` (right for a URL's own ETag; not for the
            hub, whose resolve ETag is not the storage server's).
        size: expected size in bytes, when known.
    """

    url: str
    source: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    validator: str | None = None
    if_range: bool = False
    size: int | None = None


@dataclass(frozen=True)
class PartialMeta:
    """What a partial file is a prefix of."""

    source: str
    sha256: str
    validator: str | None
    size: int | None
    started: float
    target: str = ""  # the cache path it is downloaded for


def partial_root(staging: Path) -> Path:
    """Directory of all partial downloads under a staging root."""
    return staging / PARTIAL_DIR


def locks_root(staging: Path) -> Path:
    """Directory of lock files under a staging root."""
    return staging / LOCK_DIR


def partial_key(source: str, sha256: str) -> str:
    """The stable key of the partial download of ``source`` expected to hash to ``sha256``."""
    return hashlib.sha256(f"{source}\n{sha256.lower()}".encode()).hexdigest()[:32]


def read_meta(directory: Path) -> PartialMeta | None:
    """The metadata of a partial download directory, or None when missing or unreadable."""
    try:
        data = json.loads((directory / META_NAME).read_text(encoding="utf-8"))
        return PartialMeta(
            source=str(data["source"]),
            sha256=str(data["sha256"]),
            validator=data.get("validator"),
            size=data.get("size"),
            started=float(data.get("started", 0.0)),
            target=str(data.get("target", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_meta(directory: Path, meta: PartialMeta) -> None:
    tmp = directory / f".{META_NAME}.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(meta), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, directory / META_NAME)


def partial_lock(staging: Path, key: str) -> Path:
    """The lock file guarding the partial ``key``."""
    return lock_path(locks_root(staging), f"partial:{key}")


def discard_partials(
    staging: Path, *, source: str | None = None, sha256: str | None = None, keep: str | None = None
) -> list[Path]:
    """Remove partials of ``source`` and/or for ``sha256`` (all but ``keep``) not in use.

    Returns:
        The directories removed.
    """
    removed: list[Path] = []
    root = partial_root(staging)
    if not root.is_dir():
        return removed
    for directory in sorted(root.iterdir()):
        if directory.name == keep or not directory.is_dir():
            continue
        meta = read_meta(directory)
        if meta is None:
            continue
        if source is not None and meta.source != source:
            continue
        if sha256 is not None and meta.sha256 != sha256.lower():
            continue
        with try_lock(partial_lock(staging, directory.name)) as mine:
            if mine:
                logger.info("discarding partial download of %s (%s)", meta.source, directory)
                remove_quietly(directory)
                removed.append(directory)
    return removed


class _Sink:
    """The partial file open for appending, with a running sha256 of everything in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digest = hashlib.sha256()
        self.size = 0
        self.kept = 0  # bytes of an earlier transfer still at the file's start
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        # hash the prefix kept from an earlier process: the checksum covers the whole file
        with open(self._fd, "rb", closefd=False) as f:
            while chunk := f.read(CHUNK_SIZE):
                self._digest.update(chunk)
                self.size += len(chunk)
        self.kept = self.size

    def restart(self) -> None:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._digest = hashlib.sha256()
        self.size = self.kept = 0

    def write(self, data: bytes) -> None:
        """Append ``data``; on a full disk, cut the file back to what was whole before."""
        view = memoryview(data)
        os.lseek(self._fd, self.size, os.SEEK_SET)
        try:
            while view:
                n = _write_fd(self._fd, view)
                view = view[n:]
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)
                raise DiskFullError(
                    f"disk full after {self.size:,} bytes of {self.path.parent}: {exc.strerror}; "
                    "the partial download is kept: free some space and pull again to resume"
                ) from exc
            raise
        self._digest.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[_Sink]:
    sink = _Sink(path)
    try:
        yield sink
    finally:
        if sink._fd >= 0:
            os.close(sink._fd)
            sink._fd = -1


class _Retry(Exception):
    """A response ended before the file did, without an HTTP error."""


def _transfer(remote: Remote, sink: _Sink, meta: PartialMeta, directory: Path, bar: Any) -> None:
    """GET the missing bytes into ``sink``, resuming after dropped connections.

    With ``remote.if_range`` the partial's recorded validator goes out as ``If-Range``: a
    server whose file changed answers 200 with the whole new file, and the partial restarts.
    """
    import httpx  # here: importing httpx costs start-up time of every command

    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    failures = 0
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        while remote.size is None or sink.size < remote.size:
            headers = dict(remote.headers)
            offset = sink.size
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if remote.if_range and meta.validator:
                    headers["If-Range"] = meta.validator
            try:
                with client.stream("GET", remote.url, headers=headers) as resp:
                    if resp.status_code == 416 and offset and remote.size is None:
                        return  # nothing after the bytes we have: the file is complete
                    validator = resp.headers.get("etag") or resp.headers.get("last-modified")
                    changed = bool(remote.if_range and validator and meta.validator != validator)
                    if resp.status_code == 206 and not changed:
                        _check_range(resp.headers.get("content-range"), offset, remote)
                    elif resp.status_code in (200, 206):
                        if offset:
                            logger.info("%s: the file changed upstream; restarting", remote.source)
                            sink.restart()
                            bar.reset(total=remote.size)
                        if changed:
                            meta = dataclasses.replace(meta, validator=validator)
                            _write_meta(directory, meta)
                        if resp.status_code == 206:
                            continue  # a range of the new version: ask again from byte 0
                    else:
                        raise DownloadError(f"{remote.source}: HTTP {resp.status_code}")
                    for chunk in resp.iter_raw():
                        sink.write(chunk)
                        bar.update(len(chunk))
                if remote.size is None:
                    return
                if sink.size > remote.size:
                    raise DownloadError(
                        f"{remote.source}: got {sink.size:,} bytes, expected {remote.size:,}"
                    )
                if sink.size < remote.size:
                    raise _Retry(f"response ended at byte {sink.size:,}")
            except (httpx.HTTPError, _Retry) as exc:
                failures += 1
                if failures > RETRIES:
                    raise DownloadError(
                        f"{remote.source}: {type(exc).__name__}: {exc} (after {RETRIES} retries;"
                        f" {sink.size:,} bytes kept to resume)"
                    ) from exc
                logger.info(
                    "%s: %s at byte %s; resuming (%d/%d)",
                    remote.source,
                    type(exc).__name__,
                    f"{sink.size:,}",
                    failures,
                    RETRIES,
                )
                time.sleep(RETRY_DELAY_S * failures)


def _check_range(content_range: str | None, offset: int, remote: Remote) -> None:
    # "bytes START-END/TOTAL": the server must continue exactly where the partial ends
    try:
        unit, _, spec = (content_range or "").partition(" ")
        start = int(spec.split("-", 1)[0])
    except ValueError:
        start = -1
        unit = ""
    if unit != "bytes" or start != offset:
        raise DownloadError(
            f"{remote.source}: asked for bytes from {offset}, got Content-Range {content_range!r}"
        )


def download(
    remote: Remote,
    target: Path,
    *,
    sha256: str,
    staging: Path,
    progress: bool = True,
) -> Path:
    """Download ``remote`` into ``target`` through a resumable partial, verified by sha256.

    Args:
        remote: what to fetch.
        target: final path; written (atomically) only once the whole file hashed to ``sha256``.
        sha256: expected checksum.
        staging: staging root on the same file system as ``target``.
        progress: draw a progress bar.

    Returns:
        ``target``.

    Raises:
        DownloadError: HTTP error or transfer failed after retries (the partial is kept).
        ChecksumMismatchError: the whole file hashed to another sha256 (the partial is removed).
        DiskFullError: the disk filled up (the partial is kept, cut back to whole chunks).
    """
    sha256 = sha256.lower()
    key = partial_key(remote.source, sha256)
    directory = partial_root(staging) / key
    with file_lock(partial_lock(staging, key), what=f"the download of {remote.source}"):
        discard_partials(staging, source=remote.source, keep=key)  # older upstream versions
        meta = read_meta(directory)
        data = directory / DATA_NAME
        fresh = PartialMeta(
            remote.source, sha256, remote.validator, remote.size, time.time(), str(target)
        )
        if meta is not None and (
            (remote.validator and meta.validator and remote.validator != meta.validator)
            or (remote.size and meta.size and remote.size != meta.size)
        ):
            logger.info("%s changed upstream; discarding the partial download", remote.source)
            remove_quietly(directory)
            meta = None
        if meta is None or not data.is_file():
            remove_quietly(directory)
            directory.mkdir(parents=True, exist_ok=True)
            meta = fresh
            _write_meta(directory, meta)
        for attempt in (1, 2):
            with _opened(data) as sink:
                resumed = sink.size
                if remote.size is not None and resumed > remote.size:
                    sink.restart()
                    resumed = 0
                needed = (remote.size - resumed) if remote.size is not None else None
                ensure_free_space(target.parent, needed)
                if resumed:
                    logger.info(
                        "%s: resuming at %s of %s bytes",
                        remote.source,
                        f"{resumed:,}",
                        f"{remote.size:,}" if remote.size else "?",
                    )
                bar = byte_progress(remote.size, target.name, enabled=progress)
                with bar:
                    bar.update(resumed)
                    _transfer(remote, sink, meta, directory, bar)
                size, actual, resumed = sink.size, sink.sha256, sink.kept
                sink.close()
            if remote.size is not None and size != remote.size:
                raise DownloadError(
                    f"{remote.source}: got {size:,} bytes, expected {remote.size:,}"
                )
            if actual == sha256:
                placed = place_verified(data, target, actual, source=remote.source)
                remove_quietly(directory)
                return placed
            remove_quietly(directory)
            if resumed and attempt == 1:
                # the kept prefix may be what is wrong (a torn write at power loss): once more,
                # from the first byte
                logger.warning(
                    "%s: sha256 mismatch after a resume; downloading again", remote.source
                )
                directory.mkdir(parents=True, exist_ok=True)
                _write_meta(directory, fresh)
                continue
            raise ChecksumMismatchError(
                f"sha256 mismatch for {remote.source}: expected {sha256}, got {actual}"
            )
    raise AssertionError("unreachable")  # pragma: no cover
