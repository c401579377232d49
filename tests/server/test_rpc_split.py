"""A model split over two `ggufworker rpc-worker` processes (and the local CPU), end to end.

Loopback only: two workers on 127.0.0.1, one real server (uvicorn, `ggufworker serve`) with
SmolLM2 split over them beside a local copy of the same file, and the real `openai` client.
The split model answers greedily exactly as the local one; a worker killed mid-stream ends
that stream with an error event, later requests get a 503 naming the worker while the local
model keeps answering, and a restarted worker brings the model back without a server restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ggufworker.server.core.rpc_split import probe
from tests.conftest import REPO

from .conftest import ServerProcess, _die_with_parent, free_port, running

pytestmark = pytest.mark.slow

PROMPTS = ["The history of the printing press begins", "Write a haiku about the sea."]


class Worker:
    """A `ggufworker rpc-worker` process on 127.0.0.1."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ggufworker", "rpc-worker", "--port", str(self.port),
                 "--threads", "1"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not probe(self.endpoint, timeout=0.5):
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, "worker did not listen"
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def split(
    smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, list[Worker]]]:
    logs = tmp_path_factory.mktemp("rpc-split")
    rpc_model, local_model = logs / "smol-rpc.gguf", logs / "smol-local.gguf"
    rpc_model.symlink_to(smollm2_path)
    local_model.symlink_to(smollm2_path)
    workers = [Worker(free_port(), logs / f"worker{i}.log").start() for i in range(2)]
    server = ServerProcess(
        ["--model", str(rpc_model), "--model", str(local_model), "--pin", "smol-local",
         "--rpc", ",".join(w.endpoint for w in workers),
         # 21 of 31 layers (with the output) on the workers, 1:2; the rest on this CPU
         "--gpu-layers", "21", "--tensor-split", "1,2",
         "--threads", "1", "--parallel", "2", "--ctx-size", "1024", "--keep-alive", "-1",
         "--flash-attn", "--log-level", "warning", "--offline"],
        logs / "server.log",
        home=logs / "home",
    )  # fmt: skip
    try:
        with running(server):
            yield server, workers
    finally:
        for worker in workers:
            worker.kill()


def client_of(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def greedy(client: openai.OpenAI, model: str, prompt: str, n: int = 24) -> str:
    out = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
    return out.choices[0].text


def worker_gauges(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("ggufworker_rpc_worker_up{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('worker="')[1].split('"')[0]] = float(value)
    return out


def rpc_meta(client: openai.OpenAI) -> dict:
    cards = {m.id: m.model_extra for m in client.models.list().data}
    return cards["smol-rpc"]["meta"]


def test_split_answers_as_the_local_model(split: tuple[ServerProcess, list[Worker]]) -> None:
    server, workers = split
    client = client_of(server)
    for prompt in PROMPTS:
        assert greedy(client, "smol-rpc", prompt) == greedy(client, "smol-local", prompt)
    chat = [{"role": "user", "content": PROMPTS[1]}]
    replies = [
        client.chat.completions.create(model=m, messages=chat, max_tokens=24, temperature=0)
        for m in ("smol-rpc", "smol-local")
    ]
    assert replies[0].choices[0].message.content == replies[1].choices[0].message.content
    meta = rpc_meta(client)
    assert meta["backend"] == "rpc" and meta["rpc_state"] == "ready"
    assert meta["rpc_workers"] == [{"endpoint": w.endpoint, "state": "up"} for w in workers]
    assert worker_gauges(server) == {w.endpoint: 1.0 for w in workers}


def test_dead_worker_fails_its_model_only_until_it_is_back(
    split: tuple[ServerProcess, list[Worker]],
) -> None:
    server, workers = split
    client = client_of(server)
    expected = greedy(client, "smol-rpc", PROMPTS[0])
    local_before = greedy(client, "smol-local", PROMPTS[1])
    dead = workers[1]

    stream = client.completions.create(
        model="smol-rpc", prompt="Once upon a time", max_tokens=400, temperature=0,
        stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    received = 0
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].text)
            if received == 3:
                dead.kill()
    assert received >= 3
    assert dead.endpoint in str(info.value.message)

    with pytest.raises(openai.InternalServerError) as later:
        greedy(client, "smol-rpc", PROMPTS[0])
    assert later.value.status_code == 503
    body = later.value.body
    assert isinstance(body, dict) and body["code"] == "rpc_worker_unavailable"
    assert dead.endpoint in body["message"] and workers[0].endpoint not in body["message"]
    # the other model of the server keeps answering, as before
    assert greedy(client, "smol-local", PROMPTS[1]) == local_before
    meta = rpc_meta(client)
    assert {w["endpoint"]: w["state"] for w in meta["rpc_workers"]} == {
        workers[0].endpoint: "up",
        dead.endpoint: "down",
    }
    assert worker_gauges(server)[dead.endpoint] == 0.0

    dead.start()  # the same port: the model loads again by itself
    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(openai.InternalServerError, openai.APIStatusError):
            assert greedy(client, "smol-rpc", PROMPTS[0]) == expected
            break
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.5)
    assert server.proc.poll() is None
    assert rpc_meta(client)["rpc_state"] == "ready"
    assert worker_gauges(server) == {w.endpoint: 1.0 for w in workers}
