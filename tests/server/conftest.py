"""End-to-end fixtures: real `ggufworker serve` processes on free local ports, real models.

One server per configuration for the whole session (starting one costs a few seconds):
``main_server`` serves SmolLM2 and Gemma 3 together with a readiness callback; ``tight_server``
serves the default model with one slot, no queue and API keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, SMOLLM2

SERVE = [sys.executable, "-m", "ggufworker", "serve"]
KEYS = ("test-key-1", "test-key-2")


def _die_with_parent() -> None:
    """Child side: SIGTERM when pytest dies (Linux), so a killed run leaves no server behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


#: Prompts with distinct first words, so that none starts from another's cached prefix.
DISTINCT_PROMPTS = [
    "Zebras on the savanna",
    "Quantum computers will",
    "Volcanoes erupt because",
    "Jellyfish can live",
    "Knitting a scarf takes",
    "Umbrellas were invented",
    "Xylophones sound",
    "Yesterday the mayor",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A `ggufworker serve` subprocess; stopped (SIGTERM, then SIGKILL) by :meth:`stop`."""

    def __init__(
        self, args: list[str], log_path: Path, *, home: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env_extra, env = env, dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")]
        )
        env["GGUFWORKER_HOME"] = str(home)
        env.update(env_extra or {})
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*SERVE, "--port", str(self.port), *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            preexec_fn=_die_with_parent,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class CallbackListener:
    """A local HTTP endpoint that records the JSON bodies POSTed to it."""

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ready"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


COMMON = ["--threads", "1", "--ctx-size", "4096", "--keep-alive", "-1", "--log-level", "warning"]


def cached_server(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    model_cache: Path,
    *args: str,
    common: list[str] = COMMON,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start a server on the session model cache (offline), logging under a new temp dir."""
    logs = tmp_path_factory.mktemp(name)
    return ServerProcess(
        [*common, *args, "--offline", "--home", str(model_cache)],
        logs / "server.log",
        home=logs / "home",
        env=env,
    )


def chat_reply(server: ServerProcess, content: str, **params: Any) -> str:
    """One user message to SmolLM2 through the openai client; the reply's text."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    out = client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": content}], **params
    )
    return out.choices[0].message.content or ""


@contextlib.contextmanager
def serving_files(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    model_cache: Path,
    files: dict[str, Path],
    *args: str,
) -> Iterator[ServerProcess]:
    """A running server for GGUF files (each served under its file name), stopped afterwards."""
    models = [a for path in files.values() for a in ("--model", str(path))]
    with running(cached_server(tmp_path_factory, name, model_cache, *models, *args)) as server:
        yield server


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """Wait for a started server to be ready; stop it when the block ends, whatever happens."""
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def callback_listener() -> Iterator[CallbackListener]:
    listener = CallbackListener()
    yield listener
    listener.close()


@pytest.fixture(scope="session")
def main_server(
    smollm2_path: Path,
    gemma3_path: Path,
    model_cache: Path,
    callback_listener: CallbackListener,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """SmolLM2 (by registry name) and Gemma 3 (by path), 8 slots, worker callback on."""
    server = cached_server(
        tmp_path_factory,
        "main-server",
        model_cache,
        "--model", SMOLLM2,
        "--model", str(gemma3_path),
        "--pin", SMOLLM2,
        "--embedding-model", SMOLLM2,
        "--parallel", "8",
        "--max-body-bytes", "65536",
        "--worker-id", "worker-under-test",
        "--callback-url", callback_listener.url,
    )  # fmt: skip
    with running(server):
        yield server


@pytest.fixture(scope="session")
def tight_server(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The default model (no --model), one slot, no queue, two API keys."""
    server = cached_server(
        tmp_path_factory,
        "tight-server",
        model_cache,
        "--parallel", "1",
        "--max-queue", "0",
        "--api-key", KEYS[0],
        "--api-key", KEYS[1],
    )  # fmt: skip
    with running(server):
        yield server


@pytest.fixture(scope="session")
def batch_server(
    smollm2_path: Path, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server only the concurrency test uses, so its KV cache starts empty: a prompt's greedy
    output is only bit-stable when the cache holds the same cells, and other tests' requests
    leave cached prefixes behind."""
    server = cached_server(tmp_path_factory, "batch-server", model_cache, "--parallel", "8")
    with running(server):
        yield server


# the Ollama API tests' server, one for both of their modules (defined beside them)
from tests.server.ollama_fixtures import ollama_server  # noqa: E402, F401
