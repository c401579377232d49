"""`ggufworker rpc-worker`: serve this host's devices to a model split over several hosts.

The worker is llama.cpp's own RPC server (``ggml_backend_rpc_start_server``) from the same
build as the client — the protocol needs both from one source line — run in this process
through ctypes, so no separate binary is needed. Its protocol has no authentication: it binds
loopback unless told otherwise, and another address needs ``allow_remote``; reach a worker on
another host through an SSH or WireGuard tunnel instead (docs/DEPLOY.md).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ggufworker.errors import InvalidRequestError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 50052  # llama.cpp rpc-server's

#: the warning llama.cpp's rpc-server prints for a non-loopback bind
REMOTE_WARNING = (
    "WARNING: Host ('{host}') is != '127.0.0.1'\n"
    "         Never expose the RPC server to an open network!\n"
    "         This is an experimental feature and is not secure!"
)


def check_bind(host: str, port: int, *, allow_remote: bool = False) -> str:
    """Check a worker address before llama.cpp is asked to bind it; return the IPv4 address.

    Raises:
        InvalidRequestError: not an IPv4 address (llama.cpp's worker binds IPv4 only), a
            non-loopback one without ``allow_remote``, a port out of range, or an address
            that cannot be bound (in use, not on this host).
    """
    if not 0 < port < 65536:
        raise InvalidRequestError(f"--port must be in 1..65535, got {port}", param="port")
    try:
        address = ipaddress.IPv4Address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        raise InvalidRequestError(
            f"--host {host!r} is not an IPv4 address (llama.cpp's RPC worker binds IPv4 only)",
            param="host",
        ) from None
    if not address.is_loopback and not allow_remote:
        raise InvalidRequestError(
            f"--host {host} exposes the unauthenticated RPC protocol beyond this machine; "
            "pass --allow-remote to do it anyway, or reach the worker through an SSH or "
            "WireGuard tunnel (docs/DEPLOY.md)",
            param="host",
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama.cpp's worker
        try:
            sock.bind((str(address), port))
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot listen on {address}:{port}: {exc.strerror}", param="port"
            ) from None
    return str(address)


def serve_worker(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    devices: Sequence[str] = (),
    cache_dir: Path | None = None,
    threads: int | None = None,
    allow_remote: bool = False,
) -> None:
    """Serve this host's devices as an RPC worker until the process is stopped.

    Args:
        host: address to bind (loopback unless ``allow_remote``).
        port: TCP port.
        devices: ggml device names to serve (``CUDA0``, ``CPU``...); default every GPU, else
            the CPU.
        cache_dir: where the worker keeps large tensors it was sent, so a client that loads
            the same model again sends only their hashes (None: no cache).
        threads: CPU threads of a served CPU device (default: every core this process may use).
        allow_remote: bind a non-loopback address (prints the protocol's warning).

    Raises:
        InvalidRequestError: a bad address, a device that is not here, or a worker that could
            not start (llama.cpp printed why).
    """
    from ggufworker.engine import rpc
    from ggufworker.engine.threads import available_cpus

    host = check_bind(host, port, allow_remote=allow_remote)
    if not ipaddress.IPv4Address(host).is_loopback:
        logger.warning("\n%s", REMOTE_WARNING.format(host=host))
    if not rpc.supported():
        raise InvalidRequestError(
            "this llama.cpp build has no RPC backend: reinstall with scripts/install.py "
            "(it builds with -DGGML_RPC=ON)"
        )
    handles = rpc.worker_devices(devices)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    endpoint = f"{host}:{port}"
    logger.info("RPC worker on %s serving %s", endpoint, ", ".join(rpc.device_names(handles)))
    # llama.cpp's server loop never returns while it serves; run it beside the main thread so
    # that Ctrl-C and SIGTERM still end the process
    ended = threading.Event()

    def run() -> None:
        try:
            rpc.start_server(
                endpoint,
                handles,
                cache_dir=str(cache_dir) if cache_dir else None,
                n_threads=threads or available_cpus(),
            )
        finally:
            ended.set()

    threading.Thread(target=run, name="rpc-worker", daemon=True).start()
    while not ended.wait(1.0):
        pass
    raise InvalidRequestError(f"the RPC worker on {endpoint} stopped (see the lines above)")


def default_cache_dir() -> Path:
    """``<ggufworker home>/rpc-cache``."""
    from ggufworker import paths

    return paths.home_dir() / "rpc-cache"


def register(subparsers: Any) -> None:
    """Add the ``rpc-worker`` subcommand."""
    parser = subparsers.add_parser(
        "rpc-worker",
        help="serve this host's devices to a model split over several hosts (llama.cpp RPC)",
        description=(
            "Run a llama.cpp RPC worker from this install's llama.cpp build. A server started "
            "with `ggufworker serve --model M --rpc HOST:PORT[,...]` puts layers of M on it. "
            "The protocol is unauthenticated: keep it on loopback and tunnel (docs/DEPLOY.md)."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (50052)")
    parser.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="NAME",
        help="device to serve, e.g. CUDA0 or CPU; repeatable or comma-separated "
        "(default: every GPU, else the CPU)",
    )
    parser.add_argument(
        "--cache",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="keep received tensors on disk so a reload sends only hashes "
        "(default DIR: <home>/rpc-cache)",
    )
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="bind a non-loopback --host (the protocol has no authentication)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the worker until interrupted (one line on stderr and exit 1 for bad input)."""
    if args.threads is not None and args.threads < 1:
        raise InvalidRequestError(f"--threads must be >= 1, got {args.threads}", param="threads")
    devices = [d.strip() for entry in args.device for d in entry.split(",") if d.strip()]
    cache = args.cache
    cache_dir = default_cache_dir() if cache is True else Path(cache) if cache else None
    serve_worker(
        host=args.host,
        port=args.port,
        devices=devices,
        cache_dir=cache_dir,
        threads=args.threads,
        allow_remote=args.allow_remote,
    )
    return 0


__all__ = ["DEFAULT_PORT", "check_bind", "default_cache_dir", "register", "serve_worker"]
