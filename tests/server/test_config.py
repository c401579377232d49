"""Settings precedence: flags > env vars > config file > defaults; flags derived from fields."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ggufworker.config import ServerSettings
from ggufworker.errors import InvalidRequestError
from ggufworker.paths import DEFAULT_MODEL
from ggufworker.settings_flags import add_settings_arguments, settings_from_args
from ggufworker.settings_sources import resolve_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser


def test_defaults() -> None:
    s = resolve_settings({})
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.served_models() == [DEFAULT_MODEL]
    assert s.api_keys == [] and s.cors_origins == []


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text('port = 1111\nhost = "0.0.0.0"\nparallel = 3\nmodel = ["from-file"]\n')
    s = resolve_settings({}, config_file=cfg)
    assert (s.port, s.host, s.parallel, s.models) == (1111, "0.0.0.0", 3, ["from-file"])
    monkeypatch.setenv("GGUFWORKER_PORT", "2222")
    monkeypatch.setenv("GGUFWORKER_MODELS", "a,b")
    s = resolve_settings({}, config_file=cfg)
    assert (s.port, s.host, s.models) == (2222, "0.0.0.0", ["a", "b"])
    args = _parser().parse_args(["--port", "3333", "--config", str(cfg), "-m", "x", "-m", "y"])
    s = settings_from_args(args)
    assert (s.port, s.host, s.parallel, s.models) == (3333, "0.0.0.0", 3, ["x", "y"])


def test_config_file_via_env_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("api-key: [k1, k2]\nkeep_alive: -1\n")
    monkeypatch.setenv("GGUFWORKER_CONFIG", str(cfg))
    s = resolve_settings({})
    assert s.api_keys == ["k1", "k2"] and s.keep_alive == -1


def test_flags_cover_every_field() -> None:
    parser = _parser()
    dests = {a.dest for a in parser._actions}
    assert set(ServerSettings.model_fields) <= dests
    args = parser.parse_args(["--no-preload", "--api-key", "s", "--flash-attn"])
    s = settings_from_args(args)
    assert s.preload is False and s.api_keys == ["s"] and s.flash_attn is True


def test_bad_values_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        resolve_settings({"port": 70000})
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InvalidRequestError):
        resolve_settings({}, config_file=bad)
    with pytest.raises(InvalidRequestError):
        resolve_settings({}, config_file=tmp_path / "missing.toml")


def test_kv_cache_types(monkeypatch: pytest.MonkeyPatch) -> None:
    s = resolve_settings({"cache_type_k": "q8_0", "cache_type_v": "q8_0"})
    assert (s.cache_type_k, s.cache_type_v) == ("q8_0", "q8_0")
    monkeypatch.setenv("GGUFWORKER_CACHE_TYPE_V", "q4_0")
    with pytest.raises(InvalidRequestError, match=r"^invalid setting a q4_0 V cache .* flash"):
        resolve_settings({"flash_attn": False})
    with pytest.raises(InvalidRequestError, match="--cache-type-k"):
        resolve_settings({"cache_type_k": "q3"})
