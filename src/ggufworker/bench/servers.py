"""Benchmark server processes: a free port, and a server subprocess that dies with the
benchmark and is stopped when the block ends."""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_kib(pid: int) -> int | None:
    """A process's peak resident memory (Linux ``VmHWM``), None where it cannot be read."""
    return _status_kib(pid, "VmHWM")


def rss_kib(pid: int) -> int | None:
    """A process's resident memory now (Linux ``VmRSS``), None where it cannot be read."""
    return _status_kib(pid, "VmRSS")


def llama_server_cmd(args: Any, *flags: str) -> list[str]:
    """llama-server's command line: ``--llama-server``'s binary, ``flags``, then the user's
    ``--llama-server-args``.

    Raises:
        SystemExit: no ``--llama-server`` binary was given, or it is not a file.
    """
    binary = getattr(args, "llama_server", None)
    if not binary or not Path(binary).is_file():
        raise SystemExit(
            "ggufworker bench: the llama-server target needs --llama-server PATH "
            "(build it with: python3 scripts/build_llama_server.py)"
        )
    return [binary, *flags, *shlex.split(getattr(args, "llama_server_args", "") or "")]


def bench_model_path(args: Any) -> Path:
    """The GGUF a benchmark's ``--model`` names (a path, or a registry name pulled into
    ``--home``); quiets httpx's per-request log lines for the run.

    Raises:
        ModelNotFoundError / DownloadError: the model cannot be resolved.
    """
    import logging

    from ggufworker.config import ServerSettings
    from ggufworker.server.core.loading import resolve_source

    logging.getLogger("httpx").setLevel(logging.WARNING)
    return resolve_source(args.model, ServerSettings(home=getattr(args, "home", None)))


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark process dies (Linux), so a
    killed benchmark leaves no server running."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def server(
    cmd: list[str],
    port: int,
    timeout: float,
    ready_path: str,
    procs: list[subprocess.Popen] | None = None,  # type: ignore[type-arg]
) -> Iterator[str]:
    """Run a server subprocess until the block ends; yield its base URL once it answers.
    The process is appended to ``procs`` when given (for callers that watch its memory)."""
    import ggufworker

    env = dict(os.environ)
    src = str(Path(ggufworker.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    log = tempfile.NamedTemporaryFile(prefix="ggufworker-bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
    )
    if procs is not None:
        procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[2]} exited early; log: {log.name}")
            try:
                if httpx.get(base + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[2]} not ready after {timeout}s; log: {log.name}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@dataclass
class Target:
    """A benchmark target's server, up: its URL, the model it serves, its process id."""

    base: str
    model: str
    pid: int


@contextlib.contextmanager
def started_target(cmd: list[str], timeout: float) -> Iterator[Target]:
    """Run a server command (``--port`` added) that answers ``/health`` and serves one model
    on ``/v1/models``, until the block ends."""
    port = free_port()
    procs: list[subprocess.Popen] = []  # type: ignore[type-arg]
    with server([*cmd, "--port", str(port)], port, timeout, "/health", procs) as base:
        model = httpx.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
        yield Target(base, str(model), procs[0].pid)
