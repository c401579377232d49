"""Files from the Hugging Face hub, through huggingface_hub.

huggingface_hub does the transfer: ``HF_ENDPOINT``, tokens, redirects, progress bar and resume
of a transfer cut mid-way (``http_get`` retries with a ``Range`` request from the last byte it
got). We add what the registry promises: the file's sha256 is checked (the pinned one, else the
hub's LFS sha256 from the ``X-Linked-Etag`` header) before the file is moved into the cache.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ggufworker.errors import ChecksumMismatchError, DiskFullError, DownloadError
from ggufworker.registry.cache import ensure_free_space, place_verified, sha256_file
from ggufworker.registry.schema import SHA256_PATTERN, HfSource

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(SHA256_PATTERN)
# huggingface_hub's own default is 10 s; a HEAD answer is small, so a dead host fails fast.
METADATA_TIMEOUT_S = 10.0

HF_REF_PREFIX = "hf://"


class _QuietTqdm(tqdm):  # type: ignore[misc]
    """A progress bar that never draws (huggingface_hub takes a tqdm class, not a flag)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub 2.x talks through httpx2; older releases through httpx.
    errors: list[type[BaseException]] = [OSError, ValueError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        errors.append(module.HTTPError)
    from huggingface_hub.errors import EntryNotFoundError

    errors.append(EntryNotFoundError)
    return tuple(errors)


def parse_hf_ref(ref: str) -> HfSource:
    """Parse ``hf://owner/repo[@revision]/path/to/file.gguf``.

    Raises:
        DownloadError: the reference does not have that shape.
    """
    body = ref.removeprefix(HF_REF_PREFIX)
    parts = body.split("/")
    if len(parts) < 3 or not all(parts):
        raise DownloadError(
            f"bad hub reference {ref!r}: expected hf://OWNER/REPO[@REVISION]/FILE.gguf"
        )
    owner, repo = parts[0], parts[1]
    revision = "main"
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    try:
        return HfSource(repo=f"{owner}/{repo}", filename="/".join(parts[2:]), revision=revision)
    except ValueError as exc:
        raise DownloadError(f"bad hub reference {ref!r}: {exc}") from exc


def hub_endpoint() -> str | None:
    """``$HF_ENDPOINT`` read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def hub_file_info(source: HfSource) -> tuple[str | None, int | None]:
    """(LFS sha256 or None, size) of a hub file, from one HEAD request.

    Raises:
        DownloadError: the hub is unreachable, or the repo/revision/file does not exist.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    endpoint = hub_endpoint()
    url = hf_hub_url(source.repo, source.filename, revision=source.revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, timeout=METADATA_TIMEOUT_S, endpoint=endpoint)
    except _transport_errors() as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        what = f"HTTP {status}" if status else type(exc).__name__
        raise DownloadError(f"{source.describe()}: {what}: {_first_line(exc)}") from exc
    if meta.commit_hash is None:
        raise DownloadError(
            f"{source.describe()}: {endpoint or 'the hub'} did not answer like a Hugging Face hub"
            " (no X-Repo-Commit header)"
        )
    etag = (meta.etag or "").lower()
    return (etag if SHA256_RE.match(etag) else None), meta.size


def fetch_hf(
    source: HfSource,
    target: Path,
    *,
    sha256: str | None,
    size: int | None,
    staging: Path,
    progress: bool = True,
) -> Path:
    """Download a hub file, verify it and move it to ``target``.

    Args:
        source: repo, filename and revision on the hub (``HF_ENDPOINT`` is honoured).
        target: final cache path; written only once the sha256 matched.
        sha256: pinned checksum, or None to use the hub's LFS sha256.
        size: expected size when known.
        staging: scratch directory on the same file system as ``target``.
        progress: show huggingface_hub's progress bar.

    Returns:
        ``target``.

    Raises:
        DownloadError: hub unreachable, 404, transfer failed after retries, no checksum known.
        ChecksumMismatchError: the file's sha256 is not the expected one (nothing kept).
        DiskFullError: the disk filled up (partial files removed).
    """
    from huggingface_hub import hf_hub_download

    desc = source.describe()
    hub_sha, hub_size = hub_file_info(source)
    expected = sha256 or hub_sha
    if expected is None:
        raise DownloadError(
            f"{desc}: the hub gives no LFS sha256 for this file and models.yaml pins none"
        )
    if sha256 and hub_sha and sha256 != hub_sha:
        # Known before a byte is transferred: the hub holds another file than the one pinned.
        raise ChecksumMismatchError(
            f"{desc}: hub file has sha256 {hub_sha}, registry pins {sha256}"
        )
    if size and hub_size and size != hub_size:
        raise ChecksumMismatchError(
            f"{desc}: hub file has {hub_size:,} bytes, registry says {size:,}"
        )
    staging.mkdir(parents=True, exist_ok=True)
    ensure_free_space(target.parent, hub_size or size)
    with tempfile.TemporaryDirectory(prefix="hf-", dir=staging) as work:
        try:
            local = Path(
                hf_hub_download(
                    source.repo,
                    source.filename,
                    revision=source.revision,
                    local_dir=work,
                    endpoint=hub_endpoint(),
                    etag_timeout=METADATA_TIMEOUT_S,
                    tqdm_class=None if progress else _QuietTqdm,
                )
            )
        except _transport_errors() as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full while downloading {desc}: {exc}") from exc
            raise DownloadError(f"{desc}: download failed: {_first_line(exc)}") from exc
        actual = sha256_file(local)
        if actual != expected:
            raise ChecksumMismatchError(
                f"sha256 mismatch for {desc}: expected {expected}, got {actual}"
            )
        logger.debug("verified %s (%s)", desc, actual)
        return place_verified(local, target, actual, source=desc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
