"""Partial downloads in `ggufworker list --all`, and `ggufworker gc` removing stale ones."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ggufworker import cli
from ggufworker.errors import DiskFullError
from ggufworker.registry import pull, transfer
from ggufworker.registry.cache import marker_path
from ggufworker.registry.locks import file_lock
from ggufworker.registry.transfer import partial_lock, partial_root

from .fakehub import FakeHub, gguf_bytes, sha256_hex
from .helpers import REPO, hf_source, model_entry

SIZE = 400_000


@pytest.fixture(autouse=True)
def _registry_commands_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("ggufworker.registry.cli",))


def interrupted_pull(name: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pull ``name`` until the disk 'fills up' half-way; returns the partial's directory."""
    real_write = transfer._write_fd
    room = {"left": SIZE // 2}

    def write(fd: int, buf: memoryview) -> int:
        if room["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, buf[: room["left"]])
        room["left"] -= n
        return n

    before = set(partial_root(home / "staging").glob("*"))
    with monkeypatch.context() as m:
        m.setattr(transfer, "_write_fd", write)
        with pytest.raises(DiskFullError):
            pull(name, home=home, progress=False)
    (new,) = set(partial_root(home / "staging").glob("*")) - before
    return new


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def make_old(directory: Path, age_s: float) -> None:
    then = time.time() - age_s
    os.utime(directory / "data.part", (then, then))


def test_list_all_and_gc(
    fake_hub: FakeHub,
    write_registry: Callable[..., Path],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = {n: gguf_bytes(SIZE, seed=60 + i) for i, n in enumerate(("alpha", "beta", "gamma"))}
    entries = {}
    for n, data in files.items():
        fake_hub.add(REPO, f"{n}.gguf", data)
        entries[n] = model_entry(n, [hf_source(f"{n}.gguf")], sha256_hex(data), SIZE)
    write_registry(list(entries.values()))
    partials = {n: interrupted_pull(n, home, monkeypatch) for n in files}
    home_args = ("--home", str(home))

    rows = {r["name"]: r for r in json.loads(run(capsys, "list", "--all", "--json", *home_args))}
    for n in files:
        p = rows[n]["partial"]
        assert p["path"] == str(partials[n]) and 0 < p["have"] <= SIZE // 2 and p["size"] == SIZE
        assert not (p["stale"] or p["orphaned"] or p["in_use"] or rows[n]["cached"])
    table = run(capsys, "list", "--all", *home_args)
    beta_have = rows["beta"]["partial"]["have"]
    gamma_have = rows["gamma"]["partial"]["have"]
    beta_line = next(line for line in table.splitlines() if line.startswith("beta"))
    assert f"partial {beta_have / SIZE:.0%}" in beta_line and str(partials["beta"]) in beta_line
    # without --all, partials are not reported
    plain = json.loads(run(capsys, "list", "--json", *home_args))
    assert all(r["partial"] is None for r in plain)

    # alpha leaves the registry (its partial is orphaned), beta's partial is two days old
    write_registry([entries["beta"], entries["gamma"]])
    make_old(partials["beta"], 2 * 86400)
    listed = run(capsys, "list", "--all", "--older-than", "1d", "--json", *home_args)
    rows = {r["name"]: r for r in json.loads(listed)}
    assert rows[f"hf://{REPO}/alpha.gguf"]["partial"]["orphaned"]
    assert rows["beta"]["partial"]["stale"]
    assert not rows["gamma"]["partial"]["stale"]

    dry = json.loads(run(capsys, "gc", "--dry-run", "--older-than", "1d", "--json", *home_args))
    assert {r["path"] for r in dry["removed"]} == {str(partials["alpha"]), str(partials["beta"])}
    assert all(p.exists() for p in partials.values())

    # a partial whose pull is running now is never removed, however old
    make_old(partials["gamma"], 3 * 86400)
    with file_lock(partial_lock(home / "staging", partials["gamma"].name)):
        report = json.loads(run(capsys, "gc", "--older-than", "1d", "--json", *home_args))
    assert (
        report["freed"]
        == rows["beta"]["partial"]["have"] + rows[f"hf://{REPO}/alpha.gguf"]["partial"]["have"]
    )
    assert report["kept"] == 1
    assert not partials["alpha"].exists() and not partials["beta"].exists()
    assert partials["gamma"].exists()

    # the kept partial still resumes: only the missing half is transferred
    fake_hub.requests.clear()
    path = pull("gamma", home=home, progress=False)
    assert path.read_bytes() == files["gamma"]
    assert fake_hub.sent(sha256_hex(files["gamma"])) == SIZE - gamma_have
    # the lock file a killed pull leaves behind goes too (nobody holds it)
    dead_lock = home / "staging" / "locks" / "0123.lock"
    dead_lock.write_bytes(b"")
    out = run(capsys, "gc", "--older-than", "0s", *home_args)
    assert out.strip().endswith("removed 0 partial download(s), 0 B; kept 0")
    assert not dead_lock.exists()
    assert sorted(p for p in home.rglob("*") if p.is_file()) == [path, marker_path(path)]


def test_bad_age_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gc", "--older-than", "soon"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ggufworker gc: error: bad age 'soon': expected a number with s, m, h or d (e.g. 7d)"
    ]
