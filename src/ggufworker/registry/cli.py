"""`ggufworker pull` and `ggufworker list`: thin wrappers over the registry functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ggufworker.paths import DEFAULT_MODEL


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``pull`` and ``list`` subcommands."""
    pull_p = subparsers.add_parser(
        "pull",
        help="download a model into the cache and verify it",
        description=(
            "Get a model by registry name, hf://OWNER/REPO[@REV]/FILE.gguf, or a local .gguf "
            "path. Sources are tried in order; the file is verified by sha256 and placed in "
            "the cache atomically. Prints the file's path."
        ),
    )
    pull_p.add_argument(
        "name", nargs="?", default=DEFAULT_MODEL, help=f"model (default: {DEFAULT_MODEL})"
    )
    pull_p.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="use the cache only (also GGUFWORKER_OFFLINE=1 or HF_HUB_OFFLINE=1)",
    )
    pull_p.add_argument("--home", type=Path, help="cache root (default: $GGUFWORKER_HOME)")
    pull_p.add_argument("--no-progress", action="store_true", help="no progress bars")
    pull_p.set_defaults(func=_cmd_pull)

    list_p = subparsers.add_parser(
        "list",
        help="show the registry's models and what is cached",
        description="Show every registry model and cached file: size, cache path, verified.",
    )
    list_p.add_argument("--json", action="store_true", help="machine-readable output")
    list_p.add_argument("--home", type=Path, help="cache root (default: $GGUFWORKER_HOME)")
    list_p.set_defaults(func=_cmd_list)


def _cmd_pull(args: argparse.Namespace) -> int:
    from ggufworker.registry.pull import pull

    path = pull(args.name, home=args.home, offline=args.offline, progress=not args.no_progress)
    print(path)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ggufworker.registry.listing import format_table, list_models

    rows = list_models(home=args.home)
    if args.json:
        json.dump([r.model_dump() for r in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0
