"""`file` and `url` sources, and a full disk."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ggufworker.errors import ChecksumMismatchError, DiskFullError
from ggufworker.registry import cache as cache_mod
from ggufworker.registry import pull

from .fakehub import gguf_bytes, sha256_hex
from .helpers import leftovers, model_entry


def test_file_source_relative_to_registry(
    tmp_path: Path, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(50_000, seed=31)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.gguf").write_bytes(data)
    write_registry(
        [model_entry("local", [{"type": "file", "path": "weights/w.gguf"}], sha256_hex(data))]
    )

    # file sources work offline: nothing leaves the machine
    path = pull("local", home=home, offline=True, progress=False)

    assert path == home / "models" / "local" / "local.gguf"
    assert path.read_bytes() == data


def test_file_url_source_and_checksum_fallback(
    tmp_path: Path, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(60_000, seed=32)
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(gguf_bytes(60_000, seed=33))
    right = tmp_path / "right.gguf"
    right.write_bytes(data)
    write_registry(
        [
            model_entry(
                "local",
                [{"type": "url", "url": wrong.as_uri()}, {"type": "url", "url": right.as_uri()}],
                sha256_hex(data),
                len(data),
            )
        ]
    )

    path = pull("local", home=home, progress=False)

    assert path.read_bytes() == data


def test_all_sources_wrong_checksum(
    tmp_path: Path, write_registry: Callable[..., Path], home: Path
) -> None:
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(gguf_bytes(60_000, seed=34))
    write_registry([model_entry("local", [{"type": "file", "path": str(wrong)}], "1" * 64)])

    with pytest.raises(ChecksumMismatchError, match="no source left"):
        pull("local", home=home, progress=False)

    assert leftovers(home) == []


def test_not_enough_space_fails_before_writing(
    tmp_path: Path,
    write_registry: Callable[..., Path],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = gguf_bytes(40_000, seed=35)
    src = tmp_path / "w.gguf"
    src.write_bytes(data)
    write_registry(
        [model_entry("local", [{"type": "file", "path": str(src)}], sha256_hex(data), len(data))]
    )

    class Usage:
        total, used, free = 10**9, 10**9 - 1000, 1000

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda _p: Usage)

    with pytest.raises(DiskFullError, match="not enough disk space"):
        pull("local", home=home, progress=False)
    assert leftovers(home) == []


def test_disk_full_mid_write_removes_temp(
    tmp_path: Path,
    write_registry: Callable[..., Path],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = gguf_bytes(3 * cache_mod.CHUNK_SIZE, seed=36)
    src = tmp_path / "w.gguf"
    src.write_bytes(data)
    write_registry([model_entry("local", [{"type": "file", "path": str(src)}], sha256_hex(data))])

    real_write = cache_mod.HashingWriter.write
    calls = {"n": 0}

    def write(self: cache_mod.HashingWriter, chunk: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the disk fills up after the first chunk reached the temp file
            assert self.tmp.exists()
            with cache_mod.disk_full_guard(self.tmp):
                raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, chunk)

    monkeypatch.setattr(cache_mod.HashingWriter, "write", write)

    with pytest.raises(DiskFullError, match="disk full"):
        pull("local", home=home, progress=False)
    assert leftovers(home) == []


def test_stale_work_files_are_swept(
    tmp_path: Path, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(30_000, seed=37)
    src = tmp_path / "w.gguf"
    src.write_bytes(data)
    write_registry([model_entry("local", [{"type": "file", "path": str(src)}], sha256_hex(data))])
    # leftovers of a download killed hours ago, and one from a download running now
    old_dir = home / "staging" / "hf-dead"
    old_dir.mkdir(parents=True)
    (old_dir / "x.incomplete").write_bytes(b"partial")
    old_tmp = home / "models" / "local" / ".local.gguf.deadbeef.tmp"
    old_tmp.parent.mkdir(parents=True)
    old_tmp.write_bytes(b"partial")
    live = home / "staging" / "pip-live"
    live.mkdir()
    for p in (old_dir, old_tmp):
        os.utime(p, (0, 0))

    pull("local", home=home, progress=False)

    assert not old_dir.exists() and not old_tmp.exists()
    assert live.exists()
