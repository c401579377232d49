"""`ggufworker` command line: a thin dispatcher.

Each part of the package contributes its subcommands through a module with a
``register(subparsers)`` function that adds parsers and sets ``func`` (called with the parsed
namespace, returning an exit code). Modules are imported only when present, so `ggufworker pull`
never imports llama.cpp or FastAPI.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from ggufworker import __version__
from ggufworker.errors import GGUFWorkerError

COMMAND_MODULES = (
    "ggufworker.server.cli",  # serve
    "ggufworker.registry.cli",  # pull, list
    "ggufworker.run_cli",  # run, ps, show, rm, stop, cp, completion
    "ggufworker.bench",  # bench
    "ggufworker.rpc_worker",  # rpc-worker
    "converters.cli",  # convert
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ggufworker",
        description="GGUF-first LLM runtime: pull, convert and serve quantized models.",
    )
    parser.add_argument("--version", action="version", version=f"ggufworker {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        register = getattr(importlib.import_module(name), "register", None)
        if register is not None:  # a package still without commands contributes none
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except GGUFWorkerError as exc:
        print(f"ggufworker {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        print(f"ggufworker {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
