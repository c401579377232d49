"""Pulls that survive their process: SIGKILL (or Ctrl-C) half-way, then a new process resumes.

The fake hub runs in this process at a limited rate, so a transfer takes about two seconds and a
`ggufworker pull` subprocess can be killed while its partial file holds about half of the file.
What the next pull asks for is measured from the bytes the server sent.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ggufworker.errors import ChecksumMismatchError, DiskFullError
from ggufworker.registry import pull, transfer
from ggufworker.registry.cache import marker_path, read_marker

from .fakehub import FakeHub, gguf_bytes, sha256_hex
from .helpers import REPO, hf_source, leftovers, model_entry

SIZE = 6 * 1024 * 1024 + 321
RATE = 3 * 1024 * 1024  # bytes per second: a whole transfer takes about 2 s
FILE = "resume.Q4_0.gguf"


def start_pull(name: str, home: Path) -> subprocess.Popen[bytes]:
    """`ggufworker pull NAME` in a new process (environment: this test's registry and hub)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ggufworker", "pull", name, "--home", str(home), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )


def partial_files(home: Path) -> list[Path]:
    return sorted((home / "staging" / "partial").glob("*/data.part"))


def kill_halfway(
    proc: subprocess.Popen[bytes], home: Path, size: int, sig: int = signal.SIGKILL
) -> int:
    """Send ``sig`` to ``proc`` once its partial file holds half of ``size``; returns the bytes
    kept."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = partial_files(home)
        if parts and parts[0].stat().st_size >= size // 2:
            break
        if proc.poll() is not None:
            raise AssertionError(f"pull ended before half-way: {proc.communicate()}")
        time.sleep(0.01)
    else:
        proc.kill()
        raise AssertionError("the partial never reached half of the file")
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=10)
    if sig == signal.SIGINT:  # Ctrl-C: the command says so and exits 130
        assert proc.returncode == 130 and b"interrupted" in err, err
    else:
        assert proc.returncode == -sig
    (part,) = partial_files(home)
    return part.stat().st_size


def only_the_file(home: Path, path: Path) -> None:
    assert leftovers(home) == sorted([path, marker_path(path)])


@pytest.mark.parametrize(
    ("kind", "sig"), [("hf", signal.SIGKILL), ("url", signal.SIGKILL), ("hf", signal.SIGINT)]
)
def test_killed_halfway_then_resume(
    kind: str, sig: int, fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(SIZE, seed=41)
    if kind == "hf":
        fake_hub.add(REPO, FILE, data)
        source = hf_source(FILE)
        suffix = f"/lfs-store/{sha256_hex(data)}"
    else:
        source = {"type": "url", "url": fake_hub.publish(FILE, data)}
        suffix = f"/files/{FILE}"
    write_registry([model_entry("tiny", [source], sha256_hex(data), SIZE)])
    fake_hub.rate = RATE

    kept = kill_halfway(start_pull("tiny", home), home, SIZE, sig)
    fake_hub.requests.clear()
    path = pull("tiny", home=home, progress=False)

    sent = fake_hub.sent(suffix)
    fraction = sent / SIZE
    name = signal.Signals(sig).name
    print(f"{kind}, {name}: {kept / SIZE:.1%} kept; the resumed pull transferred {fraction:.1%}")
    assert fraction <= 0.6
    assert sent == SIZE - kept  # exactly the missing bytes: no overlap, no gap
    (get,) = fake_hub.gets(suffix)
    assert get.range == f"bytes={kept}-"
    assert path.read_bytes() == data
    assert read_marker(path).sha256 == sha256_hex(data)  # type: ignore[union-attr]
    only_the_file(home, path)


@pytest.mark.parametrize("kind", ["hf", "url"])
def test_changed_upstream_restarts_from_zero(
    kind: str, fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    old, new = gguf_bytes(SIZE, seed=42), gguf_bytes(SIZE, seed=43)
    if kind == "hf":
        # unpinned: verified against the hub's LFS sha256, which changes with the file
        fake_hub.add(REPO, FILE, old)
        source, pins = hf_source(FILE), (None, None)
        suffix = "/lfs-store/"
    else:
        source = {"type": "url", "url": fake_hub.publish(FILE, old)}
        pins = (sha256_hex(old), sha256_hex(new))
        suffix = f"/files/{FILE}"
    write_registry([model_entry("tiny", [source], pins[0], SIZE)])
    fake_hub.rate = RATE
    kill_halfway(start_pull("tiny", home), home, SIZE)

    # upstream publishes another file under the same name (and models.yaml follows it)
    if kind == "hf":
        fake_hub.add(REPO, FILE, new)
    else:
        fake_hub.publish(FILE, new)
    write_registry([model_entry("tiny", [source], pins[1], SIZE)])
    fake_hub.requests.clear()
    fake_hub.rate = None
    path = pull("tiny", home=home, progress=False)

    assert path.read_bytes() == new
    (get,) = [r for r in fake_hub.gets() if suffix in r.path]
    assert get.range is None and get.sent == SIZE  # from the first byte, nothing of the old
    only_the_file(home, path)


def test_changed_url_against_old_pin_is_a_clean_mismatch(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    old, new = gguf_bytes(SIZE, seed=44), gguf_bytes(SIZE, seed=45)
    url = fake_hub.publish(FILE, old)
    write_registry([model_entry("tiny", [{"type": "url", "url": url}], sha256_hex(old), SIZE)])
    fake_hub.rate = RATE
    kill_halfway(start_pull("tiny", home), home, SIZE)
    fake_hub.publish(FILE, new)  # the mirror changed; models.yaml still pins the old file
    fake_hub.rate = None
    fake_hub.requests.clear()

    with pytest.raises(ChecksumMismatchError, match=sha256_hex(new)):
        pull("tiny", home=home, progress=False)

    # If-Range carried the old ETag, so the server sent the whole new file, not its tail
    (get,) = fake_hub.gets(f"/files/{FILE}")
    assert get.range is not None and get.sent == SIZE
    assert leftovers(home) == []


def test_concurrent_pulls_share_one_transfer(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(SIZE, seed=46)
    fake_hub.add(REPO, FILE, data)
    write_registry([model_entry("tiny", [hf_source(FILE)], sha256_hex(data), SIZE)])
    fake_hub.rate = RATE

    procs = [start_pull("tiny", home) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]

    assert [p.returncode for p in procs] == [0, 0], outs
    printed = {out.decode().strip() for out, _err in outs}
    assert len(printed) == 1
    path = Path(printed.pop())
    assert path.read_bytes() == data
    # one process downloaded, the other waited for it and reused its file
    assert fake_hub.sent("/lfs-store/" + sha256_hex(data)) == SIZE
    only_the_file(home, path)


def test_disk_full_keeps_a_valid_partial_then_resumes(
    fake_hub: FakeHub,
    write_registry: Callable[..., Path],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = gguf_bytes(SIZE, seed=47)
    fake_hub.add(REPO, FILE, data)
    write_registry([model_entry("tiny", [hf_source(FILE)], sha256_hex(data), SIZE)])
    real_write = transfer._write_fd
    room = {"left": SIZE // 3}

    def write(fd: int, buf: memoryview) -> int:
        # the file system takes part of a chunk, then reports ENOSPC
        if room["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, buf[: min(len(buf), room["left"], 1000)])
        room["left"] -= n
        return n

    monkeypatch.setattr(transfer, "_write_fd", write)
    with pytest.raises(DiskFullError, match="disk full.*pull again to resume"):
        pull("tiny", home=home, progress=False)

    (part,) = partial_files(home)
    kept = part.stat().st_size
    assert 0 < kept <= SIZE // 3
    assert part.read_bytes() == data[:kept]  # only whole, correct bytes are kept
    assert not (home / "models" / "tiny" / "tiny.gguf").exists()

    monkeypatch.setattr(transfer, "_write_fd", real_write)
    fake_hub.requests.clear()
    path = pull("tiny", home=home, progress=False)
    assert path.read_bytes() == data
    assert fake_hub.sent("/lfs-store/" + sha256_hex(data)) == SIZE - kept
    only_the_file(home, path)
