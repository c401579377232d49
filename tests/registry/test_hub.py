"""Hub downloads against a local server speaking the hub's resolve protocol."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ggufworker.errors import ChecksumMismatchError, DownloadError, OfflineError
from ggufworker.registry import pull
from ggufworker.registry.cache import marker_path, read_marker

from .fakehub import FakeHub, gguf_bytes, sha256_hex
from .helpers import REPO, closed_port_url, hf_source, leftovers, model_entry

FILE = "tiny.Q4_0.gguf"
SIZE = 3 * 1024 * 1024 + 123
# a file of several MB, cut after most of it: the retry must ask only for the rest
BIG = 24 * 1024 * 1024 + 77
CUT = 15 * 1024 * 1024


def test_pull_from_hub_verifies_and_caches(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(SIZE, seed=1)
    fake_hub.add(REPO, FILE, data)
    write_registry([model_entry("tiny", [hf_source(FILE)], sha256_hex(data), SIZE)])

    path = pull("tiny", home=home, progress=False)

    assert path == home / "models" / "tiny" / "tiny.gguf"
    assert path.read_bytes() == data
    marker = read_marker(path)
    assert marker is not None and marker.sha256 == sha256_hex(data)
    # nothing but the file and its marker is left in the cache
    assert leftovers(home) == sorted([path, marker_path(path)])

    # a second pull trusts the marker: no request reaches the hub, the file is not rewritten
    before = len(fake_hub.requests)
    mtime = path.stat().st_mtime_ns
    assert pull("tiny", home=home, progress=False) == path
    assert len(fake_hub.requests) == before
    assert path.stat().st_mtime_ns == mtime


def test_unpinned_file_is_checked_against_hub_lfs_sha(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(200_000, seed=2)
    fake_hub.add(REPO, FILE, data)
    write_registry([model_entry("tiny", [hf_source(FILE)], None)])

    path = pull("tiny", home=home, progress=False)

    assert path.read_bytes() == data
    assert read_marker(path).sha256 == sha256_hex(data)  # type: ignore[union-attr]


def test_hf_reference_without_registry_entry(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(100_000, seed=3)
    fake_hub.add("acme/other", "sub/x.gguf", data)
    write_registry([model_entry("tiny", [hf_source(FILE)], None)])

    path = pull("hf://acme/other@v1/sub/x.gguf", home=home, progress=False)

    assert path == home / "models" / "hf" / "acme" / "other" / "v1" / "sub" / "x.gguf"
    assert path.read_bytes() == data
    assert any("/acme/other/resolve/v1/sub/x.gguf" in r.path for r in fake_hub.requests)


def test_transfer_cut_midway_is_resumed(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(BIG, seed=4)
    fake_hub.add(REPO, FILE, data, cut_after=CUT)
    write_registry([model_entry("tiny", [hf_source(FILE)], sha256_hex(data), BIG)])

    path = pull("tiny", home=home, progress=False)

    assert path.read_bytes() == data
    store_gets = fake_hub.gets()
    store_gets = [r for r in store_gets if r.path.startswith("/lfs-store/")]
    assert len(store_gets) == 2, store_gets
    assert store_gets[0].range is None
    # the retry asks only for what is missing: it resumed, it did not start over
    assert store_gets[1].range is not None
    resumed_from = int(store_gets[1].range.removeprefix("bytes=").split("-")[0])
    assert 0 < resumed_from <= CUT
    assert store_gets[1].sent == BIG - resumed_from
    assert leftovers(home) == sorted([path, marker_path(path)])


def test_pinned_sha_differs_from_hub_nothing_cached(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(300_000, seed=5)
    fake_hub.add(REPO, FILE, data)
    write_registry([model_entry("tiny", [hf_source(FILE)], "0" * 64)])

    with pytest.raises(ChecksumMismatchError, match="0{64}"):
        pull("tiny", home=home, progress=False)

    assert leftovers(home) == []


def test_corrupt_transfer_removed_and_reported(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(300_000, seed=6)
    corrupt = bytearray(data)
    corrupt[150_000] ^= 0xFF
    # the hub advertises the right sha256 but the store sends damaged bytes
    fake_hub.add(REPO, FILE, data, served=bytes(corrupt))
    write_registry([model_entry("tiny", [hf_source(FILE)], sha256_hex(data))])

    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch"):
        pull("tiny", home=home, progress=False)

    assert leftovers(home) == []
    assert not (home / "models" / "tiny" / "tiny.gguf").exists()


def test_mismatch_then_next_source(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(300_000, seed=7)
    bad = gguf_bytes(300_000, seed=8)
    fake_hub.add("acme/bad", FILE, bad)
    fake_hub.add(REPO, FILE, data)
    write_registry(
        [model_entry("tiny", [hf_source(FILE, "acme/bad"), hf_source(FILE)], sha256_hex(data))]
    )

    path = pull("tiny", home=home, progress=False)

    assert path.read_bytes() == data
    assert read_marker(path).source.startswith(f"hf://{REPO}")  # type: ignore[union-attr]


def test_404_falls_back_to_next_source(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(250_000, seed=9)
    fake_hub.add(REPO, FILE, data)
    write_registry(
        [model_entry("tiny", [hf_source("missing.gguf"), hf_source(FILE)], sha256_hex(data))]
    )

    path = pull("tiny", home=home, progress=False)

    assert path.read_bytes() == data
    missing = [r for r in fake_hub.requests if r.path.endswith("/missing.gguf")]
    assert missing, "the first source was not tried"
    assert missing[0].method == "HEAD"


def test_every_source_failing_is_one_error(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    write_registry([model_entry("tiny", [hf_source("a.gguf"), hf_source("b.gguf")], None)])

    with pytest.raises(DownloadError) as info:
        pull("tiny", home=home, progress=False)

    message = str(info.value)
    assert "a.gguf" in message and "b.gguf" in message and "404" in message
    assert leftovers(home) == []


def test_hub_unreachable_is_a_download_error(
    write_registry: Callable[..., Path], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    write_registry([model_entry("tiny", [hf_source(FILE)], None)])

    with pytest.raises(DownloadError, match="Connect"):
        pull("tiny", home=home, progress=False)


@pytest.mark.parametrize("how", ["argument", "GGUFWORKER_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_without_cache(
    how: str,
    fake_hub: FakeHub,
    write_registry: Callable[..., Path],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = gguf_bytes(100_000, seed=10)
    fake_hub.add(REPO, FILE, data)
    write_registry([model_entry("tiny", [hf_source(FILE)], sha256_hex(data))])
    offline = True if how == "argument" else None
    if how != "argument":
        monkeypatch.setenv(how, "1")

    with pytest.raises(OfflineError, match="not in the cache"):
        pull("tiny", home=home, offline=offline, progress=False)

    assert fake_hub.requests == []
    assert leftovers(home) == []


def test_offline_with_cache(
    fake_hub: FakeHub,
    write_registry: Callable[..., Path],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = gguf_bytes(100_000, seed=11)
    fake_hub.add(REPO, FILE, data)
    write_registry([model_entry("tiny", [hf_source(FILE)], sha256_hex(data))])
    online = pull("tiny", home=home, progress=False)
    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert pull("tiny", home=home, progress=False) == online
    assert pull(f"hf://{REPO}/{FILE}", home=home, offline=False, progress=False).is_file()
    fake_hub.requests.clear()
    # an hf:// reference pulled once is also served offline
    assert pull(f"hf://{REPO}/{FILE}", home=home, offline=True, progress=False).is_file()
    assert fake_hub.requests == []


def test_changed_cached_file_is_rechecked(
    fake_hub: FakeHub, write_registry: Callable[..., Path], home: Path
) -> None:
    data = gguf_bytes(200_000, seed=12)
    fake_hub.add(REPO, FILE, data)
    write_registry([model_entry("tiny", [hf_source(FILE)], sha256_hex(data))])
    path = pull("tiny", home=home, progress=False)

    # damage the cached file: size/mtime no longer match the marker
    with path.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)
    os.utime(path, ns=(0, 0))

    # offline: the damaged file is detected and removed rather than returned
    with pytest.raises(OfflineError):
        pull("tiny", home=home, offline=True, progress=False)
    assert not path.exists()
    # online: fetched again
    assert pull("tiny", home=home, progress=False).read_bytes() == data
