"""``python -m ggufworker.server``: the same as ``ggufworker serve``."""

from __future__ import annotations

import argparse
import logging
import sys

from ggufworker.server.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ggufworker.server")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
