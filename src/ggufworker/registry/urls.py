"""Files from a plain URL (a mirror, a private server, ``file://``)."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from ggufworker.errors import DownloadError
from ggufworker.registry.cache import HashingWriter, byte_progress, ensure_free_space
from ggufworker.registry.schema import UrlSource
from ggufworker.registry.transfer import Remote, download

logger = logging.getLogger(__name__)


def fetch_url(
    source: UrlSource,
    target: Path,
    *,
    sha256: str,
    size: int | None,
    staging: Path,
    progress: bool = True,
) -> Path:
    """Get a URL into ``target``, verified by sha256.

    ``http(s)`` downloads go through a resumable partial (``Range`` + ``If-Range`` on the
    server's ETag, see :mod:`ggufworker.registry.transfer`); ``file://`` is copied.

    Raises:
        DownloadError: the request failed or the size is wrong (an HTTP partial is kept).
        ChecksumMismatchError: wrong sha256 (nothing kept).
        DiskFullError: the disk filled up.
    """
    parsed = urlparse(source.url)
    if parsed.scheme != "file":
        remote = Remote(url=source.url, source=source.url, if_range=True, size=size)
        return download(remote, target, sha256=sha256, staging=staging, progress=progress)
    ensure_free_space(target.parent, size)
    local = Path(url2pathname(parsed.path))
    with HashingWriter(target) as out:
        with byte_progress(size, target.name, enabled=progress) as bar:
            try:
                with local.open("rb") as f:
                    out.copy_from(f, progress=bar.update)
            except FileNotFoundError as exc:
                raise DownloadError(f"{source.url}: no such file") from exc
        if size is not None and out.size != size:
            raise DownloadError(f"{source.url}: got {out.size:,} bytes, registry says {size:,}")
        return out.commit(sha256, source=source.url)
