"""Files from a plain URL (a mirror, a private server, ``file://``)."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from ggufworker.errors import DownloadError
from ggufworker.registry.cache import HashingWriter, byte_progress, ensure_free_space
from ggufworker.registry.schema import UrlSource

logger = logging.getLogger(__name__)


def fetch_url(
    source: UrlSource,
    target: Path,
    *,
    sha256: str,
    size: int | None,
    progress: bool = True,
) -> Path:
    """Stream a URL into ``target``, hashing as it is written; moved into place if it matches.

    Raises:
        DownloadError: the request failed or the size is wrong.
        ChecksumMismatchError: wrong sha256 (nothing kept).
        DiskFullError: the disk filled up (temp file removed).
    """
    ensure_free_space(target.parent, size)
    parsed = urlparse(source.url)
    with HashingWriter(target) as out:
        bar = byte_progress(size, target.name, enabled=progress)
        with bar:
            if parsed.scheme == "file":
                local = Path(url2pathname(parsed.path))
                try:
                    with local.open("rb") as f:
                        out.copy_from(f, progress=bar.update)
                except FileNotFoundError as exc:
                    raise DownloadError(f"{source.url}: no such file") from exc
            else:
                import httpx  # here, not at module level: every command imports this module

                timeout = httpx.Timeout(30.0, connect=10.0)
                try:
                    with httpx.stream(
                        "GET", source.url, follow_redirects=True, timeout=timeout
                    ) as resp:
                        if resp.status_code != 200:
                            raise DownloadError(f"{source.url}: HTTP {resp.status_code}")
                        for chunk in resp.iter_bytes(1 << 20):
                            out.write(chunk)
                            bar.update(len(chunk))
                except httpx.HTTPError as exc:
                    raise DownloadError(f"{source.url}: {type(exc).__name__}: {exc}") from exc
        if size is not None and out.size != size:
            raise DownloadError(f"{source.url}: got {out.size:,} bytes, registry says {size:,}")
        return out.commit(sha256, source=source.url)
