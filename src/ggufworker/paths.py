"""Paths and environment variable names, in one place."""

from __future__ import annotations

import os
from pathlib import Path

ENV_PREFIX = "GGUFWORKER_"
ENV_HOME = "GGUFWORKER_HOME"
ENV_REGISTRY = "GGUFWORKER_REGISTRY"
ENV_OFFLINE = "GGUFWORKER_OFFLINE"
ENV_HF_OFFLINE = "HF_HUB_OFFLINE"

DEFAULT_MODEL = "smollm2-135m-instruct"


def home_dir() -> Path:
    """ggufworker's cache root.

    $GGUFWORKER_HOME, else $XDG_CACHE_HOME/ggufworker, else ~/.cache/ggufworker.
    """
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ggufworker"


def env_flag(name: str) -> bool:
    """True when an environment variable is set to a truthy value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
