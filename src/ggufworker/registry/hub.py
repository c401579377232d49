"""Files from the Hugging Face hub.

huggingface_hub answers what the file is (``HF_ENDPOINT``, tokens, the LFS sha256 from the
``X-Linked-Etag`` header, its size); the bytes come through :mod:`ggufworker.registry.transfer`,
whose partial files survive the process. huggingface_hub's own download cannot resume across
processes: since 2.x it writes each transfer to a process-unique temporary file and deletes it
on failure (huggingface_hub PR #4228), and a killed process leaks it. The file's sha256 (the
pinned one, else the hub's) is checked before the file is moved into the cache.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ggufworker.errors import ChecksumMismatchError, DownloadError
from ggufworker.registry.schema import SHA256_PATTERN, HfSource
from ggufworker.registry.transfer import Remote, download

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(SHA256_PATTERN)
# huggingface_hub's own default is 10 s; a HEAD answer is small, so a dead host fails fast.
METADATA_TIMEOUT_S = 10.0

HF_REF_PREFIX = "hf://"


@dataclass(frozen=True)
class HubFileInfo:
    """What the hub says about a file: where to get it and what it is."""

    url: str
    etag: str | None
    sha256: str | None  # the LFS sha256, None for a file kept in git
    size: int | None


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


def hub_file_info(source: HfSource) -> HubFileInfo:
    """Where a hub file is and its LFS sha256 and size, from one HEAD request.

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
    etag = (meta.etag or "").lower() or None
    sha = etag if etag and SHA256_RE.match(etag) else None
    return HubFileInfo(url=url, etag=etag, sha256=sha, size=meta.size)


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

    The transfer resumes a partial left by an earlier process for the same file and sha256.

    Args:
        source: repo, filename and revision on the hub (``HF_ENDPOINT`` is honoured).
        target: final cache path; written only once the sha256 matched.
        sha256: pinned checksum, or None to use the hub's LFS sha256.
        size: expected size when known.
        staging: staging root on the same file system as ``target``.
        progress: show a progress bar.

    Returns:
        ``target``.

    Raises:
        DownloadError: hub unreachable, 404, transfer failed after retries, no checksum known.
        ChecksumMismatchError: the file's sha256 is not the expected one (nothing kept).
        DiskFullError: the disk filled up (the partial is kept for a later resume).
    """
    from huggingface_hub.utils import build_hf_headers

    desc = source.describe()
    info = hub_file_info(source)
    expected = sha256 or info.sha256
    if expected is None:
        raise DownloadError(
            f"{desc}: the hub gives no LFS sha256 for this file and models.yaml pins none"
        )
    if sha256 and info.sha256 and sha256 != info.sha256:
        # Known before a byte is transferred: the hub holds another file than the one pinned.
        raise ChecksumMismatchError(
            f"{desc}: hub file has sha256 {info.sha256}, registry pins {sha256}"
        )
    if size and info.size and size != info.size:
        raise ChecksumMismatchError(
            f"{desc}: hub file has {info.size:,} bytes, registry says {size:,}"
        )
    remote = Remote(
        url=info.url,
        source=desc,
        headers=build_hf_headers(),
        validator=info.etag,
        size=info.size or size,
    )
    return download(remote, target, sha256=expected, staging=staging, progress=progress)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
