"""One broken model does not take the others down.

Two models are served. One of them fails: its file cannot be loaded, or its engine's scheduler
thread dies while the server runs. Its requests get a 5xx in OpenAI's envelope that names it;
the other model keeps answering, through the real `openai` client, exactly as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn

from ggufworker.config import ServerSettings
from ggufworker.server.app import create_app

from .conftest import COMMON, ServerProcess, free_port, running

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def ask(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=ASK, max_tokens=12, temperature=0)
    text = reply.choices[0].message.content
    assert reply.model == model and text
    return text


def broken_gguf(path: Path) -> Path:
    """A file that starts like a GGUF and is not one: llama.cpp refuses to load it."""
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 64)
    return path


def test_model_that_cannot_load(
    smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.mktemp("fault-load")
    broken = broken_gguf(logs / "broken.gguf")
    server = ServerProcess(
        [*COMMON, "--model", str(smollm2_path), "--model", str(broken), "--parallel", "2",
         "--offline"],
        logs / "server.log",
        home=logs / "home",
    )  # fmt: skip
    with running(server):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        good = smollm2_path.stem  # a model served by path is named by its file's stem
        before = ask(client, good)

        for _ in range(2):  # every try fails the same way, and the server stays up
            with pytest.raises(openai.InternalServerError) as info:
                ask(client, "broken")
            error = info.value.body
            assert info.value.status_code == 500
            assert error["code"] == "model_unavailable" and error["type"] == "server_error"
            assert "'broken' could not be loaded" in error["message"]

        assert ask(client, good) == before
        models = {m.id: m for m in client.models.list().data}
        assert set(models) == {good, "broken"}
        assert models[good].model_extra["loaded"] and not models["broken"].model_extra["loaded"]
        assert server.proc.poll() is None


@pytest.fixture
def two_engines(smollm2_path: Path, tmp_path: Path) -> Iterator[tuple[str, Any, str]]:
    """An in-process server (real engines, real uvicorn) of the model and its twin (the same
    file under another name), so a test can reach into one engine and kill its thread."""
    twin = tmp_path / "twin.gguf"
    twin.symlink_to(smollm2_path)
    settings = ServerSettings(
        models=[str(smollm2_path), str(twin)],
        port=free_port(),
        parallel=2,
        ctx_size=1024,
        threads=1,
        keep_alive=-1,
        offline=True,
        home=tmp_path / "home",
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{settings.port}", app, smollm2_path.stem
    finally:
        server.should_exit = True
        thread.join(30)


def test_engine_thread_dies(two_engines: tuple[str, Any, str]) -> None:
    url, app, good = two_engines
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    reference = ask(client, good)
    assert ask(client, "twin") == reference  # the same weights answer the same

    # a bug in the twin's scheduler: its next step raises, and the thread ends (it logs the
    # traceback and fails what it was running)
    engine = app.state.manager.lookup("twin").engine

    def broken_step() -> bool:
        raise RuntimeError("injected scheduler fault")

    engine._sched._build_batch = broken_step
    with pytest.raises(openai.APIStatusError) as running_then:
        ask(client, "twin")
    assert running_then.value.status_code == 503  # the request it was running: engine closed
    assert running_then.value.body["code"] == "engine_closed"
    engine._sched.thread.join(10)
    assert not engine.alive

    with pytest.raises(openai.InternalServerError) as info:
        ask(client, "twin")
    assert info.value.status_code == 500
    assert info.value.body["code"] == "model_unavailable"
    assert "'twin' is unavailable: its engine stopped" in info.value.body["message"]
    # the other model is untouched
    assert ask(client, good) == reference
    # and the broken one is loaded again on its next request, answering as before
    assert ask(client, "twin") == reference
    assert app.state.manager.lookup("twin").engine is not engine
