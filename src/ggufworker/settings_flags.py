"""``ggufworker serve``'s flags, derived from :class:`~ggufworker.config.ServerSettings`: one
flag per field (its name, metavar and short form from the field's ``cli`` metadata), parsed
into the values :func:`~ggufworker.settings_sources.resolve_settings` merges with env vars and
the config file."""

from __future__ import annotations

import argparse
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from ggufworker.config import ENV_CONFIG, ServerSettings, cli_meta
from ggufworker.paths import ENV_PREFIX
from ggufworker.settings_sources import resolve_settings

__all__ = ["add_settings_arguments", "settings_from_args"]


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int; ``Annotated[list[str], ...]`` -> list."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    origin = get_origin(annotation)
    return origin or annotation


def _literal_choices(annotation: Any) -> list[Any]:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [v for a in get_args(annotation) for v in _literal_choices(a)]


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per settings field. Defaults are None, so "not given" is visible to
    :func:`resolve_settings` and env vars / the config file still apply."""
    parser.add_argument(
        "--config", metavar="FILE", help=f"TOML/YAML/JSON settings file (env {ENV_CONFIG})"
    )
    for name, info in ServerSettings.model_fields.items():
        cli = cli_meta(info)
        flag = cli.get("flag") or "--" + name.replace("_", "-")
        flags = [flag] + ([cli["short"]] if cli.get("short") else [])
        env = ENV_PREFIX + name.upper()
        default = info.get_default(call_default_factory=True)
        shown = "" if default in (None, []) else f"; default {default}"
        help_text = f"{info.description} (env {env}{shown})"
        kind = _base_type(info.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs.update(action="append", metavar=cli.get("metavar") or name.upper())
        elif kind is Literal:
            kwargs.update(choices=_literal_choices(info.annotation), metavar=cli.get("metavar"))
        else:
            kwargs.update(type=kind, metavar=cli.get("metavar") or name.upper())
        parser.add_argument(*flags, **kwargs)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Resolve settings from a parsed namespace built with :func:`add_settings_arguments`."""
    values = {name: getattr(args, name, None) for name in ServerSettings.model_fields}
    return resolve_settings(values, config_file=getattr(args, "config", None))
