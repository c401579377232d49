"""`ggufworker run | ps | show | rm | stop | cp | completion`: the commands people bring from
Ollama, thin wrappers over :mod:`ggufworker.client`.

``run`` talks to a running server when one answers (``GGUFWORKER_HOST``/``GGUFWORKER_PORT``,
default http://127.0.0.1:8080) and otherwise loads the model in this process, pulling it
first. ``ps``, ``stop`` and ``cp`` need a running server; ``show`` and ``rm`` use the server
when one is up and the local cache otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


def _server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        metavar="URL",
        help="the server to talk to (default: GGUFWORKER_HOST/GGUFWORKER_PORT, else "
        "http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--api-key", metavar="KEY", help="the server's API key (default: GGUFWORKER_API_KEY)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run``, ``ps``, ``show``, ``rm``, ``stop``, ``cp`` and ``completion`` commands."""
    run_p = subparsers.add_parser(
        "run",
        help="chat with a model in the terminal (or answer one prompt)",
        description=(
            "Chat with a model: with PROMPT (or text on standard input) print the answer and "
            "exit; without, an interactive chat (/? lists its commands). Uses a running "
            "server when one answers, else loads the model here, pulling it first."
        ),
    )
    run_p.add_argument("model", metavar="MODEL", help="registry name, hf:// reference or .gguf")
    run_p.add_argument("prompt", nargs="*", metavar="PROMPT", help="answer this and exit")
    run_p.add_argument("--system", metavar="TEXT", help="system message")
    run_p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    run_p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling")
    run_p.add_argument("--max-tokens", type=int, metavar="N", help="most tokens per answer")
    run_p.add_argument("--seed", type=int, metavar="N", help="sampling seed")
    run_p.add_argument(
        "--local", action="store_true", help="never use a server: load the model in this process"
    )
    run_p.add_argument(
        "--ctx-size", type=int, default=4096, metavar="N", help="context (in-process; 4096)"
    )
    run_p.add_argument("--threads", type=int, metavar="N", help="CPU threads (in-process)")
    run_p.add_argument(
        "--offline", action="store_true", default=None, help="use the cache only (in-process)"
    )
    run_p.add_argument("--home", type=Path, help="cache root (in-process; $GGUFWORKER_HOME)")
    run_p.add_argument("--no-progress", action="store_true", help="no download progress bars")
    _server_flags(run_p)
    run_p.set_defaults(func=_cmd_run)

    ps_p = subparsers.add_parser("ps", help="list the models a running server has loaded")
    ps_p.add_argument("--json", action="store_true", help="machine-readable output")
    _server_flags(ps_p)
    ps_p.set_defaults(func=_cmd_ps)

    show_p = subparsers.add_parser(
        "show",
        help="show a model's details, capabilities, template and license",
        description="From the running server when it knows the model, else from the cache.",
    )
    show_p.add_argument("model", metavar="MODEL")
    show_p.add_argument("--template", action="store_true", help="print the whole chat template")
    show_p.add_argument("--license", action="store_true", help="print the whole license")
    show_p.add_argument("--json", action="store_true", help="machine-readable output")
    show_p.add_argument("--home", type=Path, help="cache root ($GGUFWORKER_HOME)")
    _server_flags(show_p)
    show_p.set_defaults(func=_cmd_show)

    rm_p = subparsers.add_parser(
        "rm",
        help="remove models from the cache",
        description=(
            "Remove cached model files: the server's cache when a server is up, else the "
            "local one. A model the server has loaded is refused unless --force (it is then "
            "unloaded first, after its requests in flight)."
        ),
    )
    rm_p.add_argument("models", nargs="+", metavar="MODEL")
    rm_p.add_argument("--force", action="store_true", help="unload a loaded model first")
    rm_p.add_argument("--home", type=Path, help="cache root ($GGUFWORKER_HOME)")
    _server_flags(rm_p)
    rm_p.set_defaults(func=_cmd_rm)

    stop_p = subparsers.add_parser(
        "stop", help="unload a model from a running server (after its requests in flight)"
    )
    stop_p.add_argument("model", metavar="MODEL")
    _server_flags(stop_p)
    stop_p.set_defaults(func=_cmd_stop)

    cp_p = subparsers.add_parser(
        "cp", help="serve a model under another name too (on a running server, until it stops)"
    )
    cp_p.add_argument("source", metavar="SOURCE")
    cp_p.add_argument("destination", metavar="DESTINATION")
    _server_flags(cp_p)
    cp_p.set_defaults(func=_cmd_cp)

    comp_p = subparsers.add_parser(
        "completion",
        help="print a shell completion script",
        description=(
            "Print the completion script of a shell, made from this command's parser. "
            'bash: eval "$(ggufworker completion bash)" in ~/.bashrc; '
            "zsh: ggufworker completion zsh > ~/.zfunc/_ggufworker (a folder on fpath)."
        ),
    )
    comp_p.add_argument("shell", choices=["bash", "zsh"])
    comp_p.set_defaults(func=_cmd_completion)


# --- handlers ---------------------------------------------------------------------------------


def _quiet(args: argparse.Namespace) -> None:
    """Only warnings on stderr unless -v: the terminal is for the conversation."""
    if not getattr(args, "verbose", False):
        logging.getLogger().setLevel(logging.WARNING)


def _connect(args: argparse.Namespace, *, required: bool) -> Any:
    from ggufworker.client.server import ServerClient, ServerUnreachableError, server_url

    _quiet(args)
    url = args.host or server_url()
    client = ServerClient.connect(url, key=args.api_key)
    if client is None and (required or args.host):
        raise ServerUnreachableError(
            f"no ggufworker server answers at {url} (start one with `ggufworker serve`)"
        )
    return client


def _cmd_run(args: argparse.Namespace) -> int:
    from ggufworker.client.chat import ChatSession, LocalChat, RemoteChat
    from ggufworker.client.repl import Repl, enable_line_editing, run_once

    _quiet(args)
    options: dict[str, Any] = {
        key: value
        for key, value in (
            ("temperature", args.temperature),
            ("top_p", args.top_p),
            ("max_tokens", args.max_tokens),
            ("seed", args.seed),
        )
        if value is not None
    }
    prompt = " ".join(args.prompt)
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    client = None if args.local else _connect(args, required=False)
    backend: Any
    if client is not None:
        backend = RemoteChat(client, args.model)
    else:
        backend = LocalChat.open(
            args.model,
            home=args.home,
            offline=args.offline,
            progress=not args.no_progress,
            n_ctx=args.ctx_size,
            n_threads=args.threads,
        )
    try:
        session = ChatSession(backend, system=args.system, options=options)
        if prompt.strip():
            return run_once(session, prompt)
        enable_line_editing()
        return Repl(session).run()
    finally:
        backend.close()


def _cmd_ps(args: argparse.Namespace) -> int:
    from ggufworker.client.manage import format_ps, running_models

    with _connect(args, required=True) as client:
        rows = running_models(client)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_ps(rows))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from ggufworker.client.manage import describe, format_card

    client = _connect(args, required=False)
    try:
        card = describe(args.model, client=client, home=args.home)
    finally:
        if client is not None:
            client.close()
    if args.json:
        json.dump(card.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.template:
        print(card.template)
    elif args.license:
        print(card.license)
    else:
        print(format_card(card))
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    from ggufworker.client.manage import remove

    client = _connect(args, required=False)
    try:
        for name in args.models:
            where = remove(name, client=client, force=args.force, home=args.home)
            print(f"deleted '{name}' ({where})")
    finally:
        if client is not None:
            client.close()
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from ggufworker.client.manage import stop

    with _connect(args, required=True) as client:
        row = stop(args.model, client=client)
    print(f"stopped '{row['id']}'")
    return 0


def _cmd_cp(args: argparse.Namespace) -> int:
    from ggufworker.client.manage import copy

    with _connect(args, required=True) as client:
        copy(args.source, args.destination, client=client)
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def _cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from ggufworker.cli import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
