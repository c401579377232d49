"""The child's side of :class:`~ggufworker.engine.child.ChildEngine`: ``python -m
ggufworker.engine.child_main FD`` loads the engine the first message on socket ``FD`` asks for
and serves it: submits, cancels and calls in; acceptance, token events and results out, each
request's events forwarded by a thread of its own. The parent's end of the socket closing (the
server gone) ends the child.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from ggufworker.engine.child import pack_error
from ggufworker.engine.handle import RequestHandle
from ggufworker.engine.types import GenerationRequest


def serve_child(conn: Connection) -> None:
    """The child's loop: load the engine the first message asks for, then serve it."""
    from ggufworker.engine import Engine

    _, path, options, level = conn.recv()
    logging.basicConfig(
        level=level or logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    try:
        engine = Engine.load(path, **options)
    except Exception as exc:
        send(("failed", pack_error(exc)))
        return
    send(("ready", engine.info, _props(engine)))
    handles: dict[int, RequestHandle] = {}
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "close":
                break
            if kind == "submit":
                _submit(engine, message[1], message[2], handles, send)
            elif kind == "cancel":
                handle = handles.get(message[1])
                if handle is not None:
                    handle.cancel()
            elif kind == "call":
                _, key, method, args = message
                try:
                    send(("result", key, getattr(engine, method)(*args)))
                except Exception as exc:
                    send(("raise", key, pack_error(exc)))
    finally:
        engine.close()


def _props(engine: Any) -> dict[str, Any]:
    return {
        "kv_layout": engine.kv_layout,
        "kv_cache_type": engine.kv_cache_type,
        "sampling": engine.sampling,
        "pipelined": engine.pipelined,
    }


def _submit(
    engine: Any,
    key: int,
    request: GenerationRequest,
    handles: dict[int, RequestHandle],
    send: Callable[[tuple[Any, ...]], None],
) -> None:
    try:
        handle = engine.submit(request)
    except Exception as exc:
        send(("raise", key, pack_error(exc)))
        return
    handles[key] = handle
    send(("result", key, None))

    def forward() -> None:
        try:
            for event in handle:
                send(("event", key, event))
            send(("end", key))
        except Exception as exc:
            try:
                send(("error", key, pack_error(exc)))
            except OSError:
                pass
        finally:
            handles.pop(key, None)

    threading.Thread(target=forward, name=f"forward-{key}", daemon=True).start()


def _die_with_parent(parent: int) -> None:
    """Be killed when the server process ``parent`` dies (Linux), so no engine is left behind.
    Set here, not in a ``preexec_fn`` (unsafe in the server's threaded process)."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the signal was set
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ggufworker.engine.child_main FD [PARENT_PID]``: serve an engine on the
    socket ``FD`` (and die with ``PARENT_PID``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1:
        _die_with_parent(int(args[1]))
    conn = Connection(int(args[0]))
    try:
        serve_child(conn)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
