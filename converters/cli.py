"""``ggufworker convert``: the same conversion as ``python -m converters.st2gguf``."""

from __future__ import annotations

import argparse

from converters.st2gguf import build_parser, run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand to the ``ggufworker`` CLI."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a SafeTensors checkpoint folder to GGUF",
        description="Convert a Hugging Face SafeTensors checkpoint to GGUF (no torch needed).",
    )
    build_parser(parser)
    parser.set_defaults(func=run)
