"""Sequence states on disk: the file format, the model digest that keys them, and the disk tier
of the prompt cache (states that outlive the process).

A file is ``GGWSTATE`` + a format version + a JSON header + the payload (the tokens as int32,
the whole state, then each checkpoint's partial state). The header names the model (a digest of
the GGUF's size and sampled content), the memory layout the state was read from (llama.cpp's
state holds one block per KV stream, so a per-slot layout with another slot count cannot read
it) and the payload's SHA-256. A file whose header does not parse, names another model or
layout, or whose payload does not hash to the header's digest is never given to llama.cpp.
Files are written to a temporary name beside the target and renamed into place.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufworker.engine.prompt_cache import Checkpoint, Entry, Usable

logger = logging.getLogger(__name__)

MAGIC = b"GGWSTATE"
VERSION = 1
SUFFIX = ".gstate"
_FIXED = struct.Struct("<8sII")  # magic, version, header length
_MAX_HEADER = 64 << 20
_SAMPLE = 4 << 20  # bytes of the GGUF read at its start for the digest (metadata, vocab)
_TAIL = 1 << 20  # and at its middle and end (weights)


class StateFileError(ValueError):
    """A state file that cannot be used: unreadable, corrupt, or made for another model."""


def model_digest(path: str | os.PathLike[str]) -> str:
    """A digest of a GGUF file cheap enough to take at every load: its size, its first 4 MiB
    (header, metadata, vocabulary) and 1 MiB at its middle and at its end (weights). Two files
    that differ only elsewhere get the same digest; a re-quantized, re-converted or fine-tuned
    model does not."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with p.open("rb") as f:
        h.update(f.read(_SAMPLE))
        for at in (size // 2, max(0, size - _TAIL)):
            f.seek(at)
            h.update(f.read(_TAIL))
    return h.hexdigest()[:32]


def prefix_key(tokens: Sequence[int]) -> str:
    """The file name stem of a state holding ``tokens``."""
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:40]


@dataclass(frozen=True)
class StateHeader:
    """What a state file says about itself (read without its payload)."""

    model: str
    layout: str
    tokens: list[int]
    data_len: int
    checkpoints: list[tuple[int, int]]  # (n_tokens, bytes)
    sha256: str
    offset: int  # where the payload starts
    size: int  # file size


def _payload_parts(entry: Entry) -> list[bytes | bytearray]:
    toks = struct.pack(f"<{len(entry.tokens)}i", *entry.tokens)
    return [toks, entry.data, *(c.data for c in entry.checkpoints)]


def write_state_file(path: Path, entry: Entry, *, model: str, layout: str) -> int:
    """Write ``entry`` to ``path`` (temporary file, then rename); returns the bytes written.

    Raises:
        OSError: the file cannot be written (the target is left as it was).
    """
    parts = _payload_parts(entry)
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    header = json.dumps(
        {
            "model": model,
            "layout": layout,
            "n_tokens": len(entry.tokens),
            "data_len": len(entry.data),
            "checkpoints": [[c.n_tokens, len(c.data)] for c in entry.checkpoints],
            "sha256": h.hexdigest(),
        }
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_FIXED.pack(MAGIC, VERSION, len(header)))
            f.write(header)
            for part in parts:
                f.write(part)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return _FIXED.size + len(header) + sum(len(p) for p in parts)


def read_header(path: Path) -> StateHeader:
    """The header of a state file, its tokens included.

    Raises:
        StateFileError: not a state file of this format, or cut short.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            fixed = f.read(_FIXED.size)
            if len(fixed) != _FIXED.size:
                raise StateFileError(f"{path.name}: too short for a state file")
            magic, version, n_header = _FIXED.unpack(fixed)
            if magic != MAGIC or version != VERSION:
                raise StateFileError(
                    f"{path.name}: not a ggufworker state file (version {VERSION})"
                )
            if n_header > _MAX_HEADER:
                raise StateFileError(f"{path.name}: header too large")
            meta = json.loads(f.read(n_header))
            n_tokens = int(meta["n_tokens"])
            raw = f.read(4 * n_tokens)
            if len(raw) != 4 * n_tokens:
                raise StateFileError(f"{path.name}: cut short")
            tokens = list(struct.unpack(f"<{n_tokens}i", raw))
            checkpoints = [(int(n), int(b)) for n, b in meta["checkpoints"]]
            header = StateHeader(
                model=str(meta["model"]),
                layout=str(meta["layout"]),
                tokens=tokens,
                data_len=int(meta["data_len"]),
                checkpoints=checkpoints,
                sha256=str(meta["sha256"]),
                offset=_FIXED.size + n_header,
                size=size,
            )
    except StateFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise StateFileError(f"{path.name}: unreadable state file ({exc})") from None
    payload = 4 * len(tokens) + header.data_len + sum(b for _, b in checkpoints)
    if header.offset + payload != size or header.data_len <= 0:
        raise StateFileError(f"{path.name}: size does not match its header (corrupt)")
    return header


def read_state_file(path: Path, *, model: str, layout: str) -> tuple[Entry, int]:
    """Read and check a state file; returns its entry and the bytes read.

    Raises:
        StateFileError: unreadable, corrupt, or made for another model or memory layout.
    """
    header = read_header(path)
    check_owner(path, header, model=model, layout=layout)
    try:
        with path.open("rb") as f:
            f.seek(header.offset)
            payload = f.read()
    except OSError as exc:
        raise StateFileError(f"{path.name}: unreadable state file ({exc})") from None
    if hashlib.sha256(payload).hexdigest() != header.sha256:
        raise StateFileError(f"{path.name}: its content does not match its checksum (corrupt)")
    at = 4 * len(header.tokens)
    data = payload[at : at + header.data_len]
    at += header.data_len
    checkpoints = []
    for n_tokens, n_bytes in header.checkpoints:
        checkpoints.append(Checkpoint(n_tokens, payload[at : at + n_bytes]))
        at += n_bytes
    return Entry(header.tokens, data, checkpoints), header.size


def check_owner(path: Path, header: StateHeader, *, model: str, layout: str) -> None:
    """Raises StateFileError when the file was made for another model or memory layout."""
    if header.model != model:
        raise StateFileError(f"{path.name}: made for another model ({header.model}, not {model})")
    if header.layout != layout:
        raise StateFileError(
            f"{path.name}: made with another memory layout ({header.layout}, not {layout})"
        )


@dataclass
class _Indexed:
    path: Path
    tokens: list[int]
    checkpoints: list[Checkpoint]  # positions only (empty data)
    size: int
    mtime: float


class DiskTier:
    """States kept in ``directory/<model digest>/`` across restarts, at most ``cap`` bytes
    (oldest files deleted first). Writes run on a thread of their own; reads (a restore) on
    the caller's."""

    def __init__(self, directory: Path, cap: int, *, model: str, layout: str) -> None:
        self.dir = Path(directory) / model
        self.cap = cap
        self.model = model
        self.layout = layout
        self._lock = threading.Lock()
        self._index: dict[str, _Indexed] = {}
        self._writer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="ggufworker-disk"
        )
        self._pending: list[concurrent.futures.Future[Any]] = []
        self.dir.mkdir(parents=True, exist_ok=True)
        self._scan()

    def _scan(self) -> None:
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                header = read_header(path)
                check_owner(path, header, model=self.model, layout=self.layout)
            except StateFileError as exc:
                logger.warning("prompt cache: ignoring %s", exc)
                continue
            marks = [Checkpoint(n, b"") for n, _ in header.checkpoints]
            self._index[path.stem] = _Indexed(
                path, header.tokens, marks, header.size, path.stat().st_mtime
            )
        if self._index:
            logger.info(
                "prompt cache: %d states on disk (%.0f MiB) in %s",
                len(self._index), self.held / 2**20, self.dir,
            )  # fmt: skip

    @property
    def held(self) -> int:
        with self._lock:
            return sum(e.size for e in self._index.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def best(self, tokens: list[int], usable: Usable) -> tuple[Path | None, int]:
        """The file serving the most tokens of ``tokens``."""
        with self._lock:
            items = list(self._index.values())
        best: Path | None = None
        n_best = 0
        for e in items:
            n = usable(e.tokens, e.checkpoints, tokens)
            if n > n_best:
                best, n_best = e.path, n
        return best, n_best

    def holds(self, tokens: list[int]) -> bool:
        with self._lock:
            return prefix_key(tokens) in self._index

    def load(self, path: Path) -> Entry | None:
        """The entry of an indexed file; a file that fails its checks is dropped from the
        index with a warning and never loaded."""
        try:
            entry, _ = read_state_file(path, model=self.model, layout=self.layout)
        except StateFileError as exc:
            logger.warning("prompt cache: ignoring %s", exc)
            with self._lock:
                self._index.pop(path.stem, None)
            return None
        os.utime(path)  # most recently used: the cap deletes it last
        with self._lock:
            if path.stem in self._index:
                self._index[path.stem].mtime = time.time()
        return entry

    def put(self, entry: Entry) -> None:
        """Write ``entry`` in the background (a state already on disk is rewritten)."""
        if entry.size > self.cap:
            return
        fut = self._writer.submit(self._write, entry)
        self._pending = [f for f in self._pending if not f.done()] + [fut]

    def _write(self, entry: Entry) -> None:
        key = prefix_key(entry.tokens)
        path = self.dir / f"{key}{SUFFIX}"
        try:
            size = write_state_file(path, entry, model=self.model, layout=self.layout)
        except OSError as exc:
            logger.warning("prompt cache: could not write %s: %s", path, exc)
            return
        marks = [Checkpoint(c.n_tokens, b"") for c in entry.checkpoints]
        with self._lock:
            self._index[key] = _Indexed(path, list(entry.tokens), marks, size, time.time())
            self._trim()

    def _trim(self) -> None:
        total = sum(e.size for e in self._index.values())
        for key, e in sorted(self._index.items(), key=lambda kv: kv[1].mtime):
            if total <= self.cap:
                break
            e.path.unlink(missing_ok=True)
            del self._index[key]
            total -= e.size

    def flush(self) -> None:
        """Wait for the writes queued so far."""
        for fut in list(self._pending):
            fut.result()
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)
