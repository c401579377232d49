"""`--lora NAME=PATH[:SCALE]`: parsed into adapter specs, refused with one line when malformed or
when the file is missing; the env var takes a comma-separated or JSON list."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ggufworker.config import ServerSettings
from ggufworker.errors import InvalidRequestError
from ggufworker.server.lora.table import LoraTable, parse_adapter


def test_parse_adapter(tmp_path: Path) -> None:
    spec = parse_adapter(f"sql={tmp_path}/a.gguf:0.25")
    assert (spec.name, spec.path, spec.scale) == ("sql", tmp_path / "a.gguf", 0.25)
    assert parse_adapter("x=/models/a.gguf").scale == 1.0
    # a colon that is no scale stays in the path
    assert parse_adapter("x=/data/v1:final/a.gguf").path == Path("/data/v1:final/a.gguf")
    for bad in ("noequals", "=a.gguf", "x=", "x=a.gguf:inf"):
        with pytest.raises(InvalidRequestError):
            parse_adapter(bad)


def test_settings_check_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    monkeypatch.setenv("GGUFWORKER_LORAS", f"a={a},b={b}:0.5")
    settings = ServerSettings()
    assert settings.loras == [f"a={a}", f"b={b}:0.5"]
    table = LoraTable.from_settings(settings.loras, "base")
    assert [(s.name, s.scale) for s in table.adapters("base")] == [("a", 1.0), ("b", 0.5)]
    assert table.find("base:b") == ("base", table.adapters("base")[1])
    assert table.find("b") == ("base", table.adapters("base")[1])  # vLLM's bare adapter name
    assert table.find("base:c") is None and table.find("base") is None
    monkeypatch.delenv("GGUFWORKER_LORAS")
    with pytest.raises(ValidationError, match=r"--lora c: no file at .*c\.gguf"):
        ServerSettings(loras=[f"c={tmp_path / 'c.gguf'}"])
    with pytest.raises(InvalidRequestError, match="already has a LoRA adapter named 'a'"):
        LoraTable.from_settings([f"a={a}", f"a={b}"], "base")
