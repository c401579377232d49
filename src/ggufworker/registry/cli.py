"""`ggufworker pull`, `list` and `gc`: thin wrappers over the registry functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ggufworker.paths import DEFAULT_MODEL


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``pull``, ``list`` and ``gc`` subcommands."""
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
    list_p.add_argument(
        "--all",
        action="store_true",
        help="also show partial downloads (resumable; stale or orphaned ones are what gc removes)",
    )
    list_p.add_argument("--home", type=Path, help="cache root (default: $GGUFWORKER_HOME)")
    _older_than(list_p)
    list_p.set_defaults(func=_cmd_list)

    gc_p = subparsers.add_parser(
        "gc",
        help="remove stale partial downloads",
        description=(
            "Remove partial downloads untouched for longer than --older-than, those of models "
            "no longer in the registry (or now pinned to another sha256), and scratch files of "
            "pulls that died. Partials of pulls running now are never touched."
        ),
    )
    gc_p.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    gc_p.add_argument("--json", action="store_true", help="machine-readable output")
    gc_p.add_argument("--home", type=Path, help="cache root (default: $GGUFWORKER_HOME)")
    _older_than(gc_p)
    gc_p.set_defaults(func=_cmd_gc)


def _older_than(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than",
        default="7d",
        metavar="AGE",
        help="a partial untouched for longer is stale: 90s, 30m, 6h, 7d (default: 7d)",
    )


def _cmd_pull(args: argparse.Namespace) -> int:
    from ggufworker.registry.pull import pull

    path = pull(args.name, home=args.home, offline=args.offline, progress=not args.no_progress)
    print(path)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ggufworker.registry.gc import parse_age
    from ggufworker.registry.listing import format_table, list_models

    max_age = parse_age(args.older_than)
    rows = list_models(home=args.home, partials=args.all, max_age_s=max_age)
    if args.json:
        json.dump([r.model_dump() for r in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from ggufworker.registry.gc import collect_garbage, parse_age
    from ggufworker.registry.listing import format_size

    report = collect_garbage(
        home=args.home, max_age_s=parse_age(args.older_than), dry_run=args.dry_run
    )
    if args.json:
        rows = [
            {"path": str(p.path), "source": p.source, "bytes": p.have, "reason": p.reason}
            for p in report.removed
        ]
        json.dump(
            {
                "dry_run": args.dry_run,
                "removed": rows,
                "freed": report.freed,
                "kept": len(report.kept),
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for p in report.removed:
        print(f"{verb} {p.path} ({p.source}, {format_size(p.have)}): {p.reason}")
    print(
        f"{verb} {len(report.removed)} partial download(s), {format_size(report.freed)}; "
        f"kept {len(report.kept)}"
    )
    return 0
