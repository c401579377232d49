"""`ggufworker pull` / `ggufworker list` through the real command-line entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ggufworker import cli

from .fakehub import FakeHub, gguf_bytes, sha256_hex
from .helpers import REPO, hf_source, model_entry


@pytest.fixture(autouse=True)
def _registry_commands_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real dispatcher and error handling, with only this package's commands registered:
    # a half-written module of another part must not decide these tests.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("ggufworker.registry.cli",))


def main(argv: list[str]) -> int:
    return cli.main(argv)


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one clear line, no traceback
    return err[0]


def test_unknown_name_exits_2_with_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "smolm2"]) == 2
    line = _err_line(capsys)
    assert line.startswith("ggufworker pull: error: unknown model 'smolm2'")
    assert "smollm2-135m-instruct" in line

    assert main(["pull", "gemma3"]) == 2
    assert "gemma3-270m" in _err_line(capsys)


def test_unknown_name_without_close_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "zzzzzz"]) == 2
    line = _err_line(capsys)
    assert "unknown model 'zzzzzz'" in line and "did you mean" not in line


def test_pull_and_list_show_verified(
    fake_hub: FakeHub,
    write_registry: Callable[..., Path],
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = gguf_bytes(150_000, seed=21)
    fake_hub.add(REPO, "a.gguf", data)
    write_registry(
        [
            model_entry("alpha", [hf_source("a.gguf")], sha256_hex(data)),
            model_entry("beta", [hf_source("b.gguf")], None),
        ]
    )

    assert main(["pull", "alpha", "--home", str(home), "--no-progress"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.read_bytes() == data

    assert main(["list", "--json", "--home", str(home)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["alpha"]["cached"] and rows["alpha"]["verified"]
    assert rows["alpha"]["path"] == str(printed)
    assert rows["alpha"]["cached_size"] == len(data)
    assert rows["alpha"]["default"]
    assert not rows["beta"]["cached"] and not rows["beta"]["verified"]

    assert main(["list", "--home", str(home)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["NAME", "ARCH"]
    alpha = next(line for line in table if line.startswith("alpha"))
    assert "verified" in alpha and str(printed) in alpha
    beta = next(line for line in table if line.startswith("beta"))
    assert "verified" not in beta

    # a file changed after verification is reported as such, not as verified
    with printed.open("ab") as f:
        f.write(b"x")
    assert main(["list", "--json", "--home", str(home)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["alpha"]["cached"] and not rows["alpha"]["verified"]


def test_list_shows_hf_reference_pulls(
    fake_hub: FakeHub,
    write_registry: Callable[..., Path],
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = gguf_bytes(120_000, seed=22)
    fake_hub.add(REPO, "c.gguf", data)
    write_registry([model_entry("alpha", [hf_source("a.gguf")], None)])

    assert main(["pull", f"hf://{REPO}/c.gguf", "--home", str(home), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["list", "--json", "--home", str(home)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    ref = rows[f"hf://{REPO}/c.gguf"]
    assert ref["verified"] and ref["sha256"] == sha256_hex(data)


def test_offline_flag_not_cached(
    fake_hub: FakeHub,
    write_registry: Callable[..., Path],
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_registry([model_entry("alpha", [hf_source("a.gguf")], None)])

    assert main(["pull", "alpha", "--offline", "--home", str(home)]) == 1
    assert "offline" in _err_line(capsys)
    assert fake_hub.requests == []


def test_broken_registry_is_one_line_with_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("version: 1\narchitectures: {}\nmodels:\n  - name: x\n    size: [\n")
    monkeypatch.setenv("GGUFWORKER_REGISTRY", str(bad))

    assert main(["list"]) == 1
    line = _err_line(capsys)
    assert line.startswith(f"ggufworker list: error: {bad}:")
    assert "invalid YAML" in line

    assert main(["pull", "x"]) == 1
    assert f"{bad}:" in _err_line(capsys)


def test_local_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "m.gguf"
    good.write_bytes(gguf_bytes(1000))
    assert main(["pull", str(good)]) == 0
    assert capsys.readouterr().out.strip() == str(good)

    not_gguf = tmp_path / "n.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    assert main(["pull", str(not_gguf)]) == 1
    assert "not a GGUF file" in _err_line(capsys)

    assert main(["pull", str(tmp_path / "missing.gguf")]) == 1
    assert "no such file" in _err_line(capsys)
