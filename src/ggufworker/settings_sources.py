"""Where settings come from and which wins: flags > env vars > config file > defaults.

:func:`resolve_settings` merges the sources into the one :class:`~ggufworker.config.ServerSettings`
and turns a validation error into one line naming each bad setting by its flag and env var.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource

from ggufworker.config import ENV_CONFIG, ENV_PREFIX, ServerSettings, _flag_aliases, cli_meta


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config file (TOML, YAML or JSON, by extension) into a dict of settings.

    Keys are field names; dashes are accepted for underscores, and ``model``/``api_key``-style
    flag names for their list fields.

    Raises:
        InvalidRequestError: the file is missing, unreadable or not a mapping.
    """
    from ggufworker.errors import InvalidRequestError

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequestError(f"cannot read config file {path}: {exc}") from exc
    try:
        if path.suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # parse errors of three libraries, one message
        raise InvalidRequestError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, Mapping):
        raise InvalidRequestError(f"config file {path} must hold a mapping of settings")
    aliases = _flag_aliases()
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        out[aliases.get(name, name)] = value
    return out


def resolve_settings(
    cli_values: Mapping[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
) -> ServerSettings:
    """Build the settings from every source: flags > env vars > config file > defaults.

    Args:
        cli_values: values given on the command line (None values mean "not given").
        config_file: a TOML/YAML/JSON file; default ``$GGUFWORKER_CONFIG`` when set.

    Returns:
        The validated settings.
    """
    env_values = EnvSettingsSource(ServerSettings)()
    path = config_file or os.environ.get(ENV_CONFIG)
    file_values = read_config_file(path) if path else {}
    given = {k: v for k, v in (cli_values or {}).items() if v is not None}
    merged = {**file_values, **env_values, **given}
    try:
        return ServerSettings(**merged)
    except ValidationError as exc:
        from ggufworker.errors import InvalidRequestError

        raise InvalidRequestError(_settings_error(exc)) from exc


def _settings_error(exc: ValidationError) -> str:
    """One line naming each bad setting by its flag and env var."""
    parts = []
    for err in exc.errors():
        if not err["loc"]:  # a rule over several settings: its message names them
            parts.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        name = str(err["loc"][0])
        info = ServerSettings.model_fields.get(name)
        flag = (cli_meta(info).get("flag") if info else None) or "--" + name.replace("_", "-")
        got = err.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{flag} / {ENV_PREFIX}{name.upper()}: {msg}{shown}")
    return "invalid setting " + "; ".join(dict.fromkeys(parts))
