"""The lifecycle API against a real `ggufworker serve`: /models (status of every model),
/models/load, /models/unload, /models/sse, pins under --max-loaded-models, /props and /slots.

Three names of SmolLM2 (links to the one file) are served with room for two loaded models,
so loading a third one has to evict.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ServerProcess, cached_server, running

NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def server(
    smollm2_path: Path,
    model_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    links = tmp_path_factory.mktemp("lifecycle-models")
    args: list[str] = []
    for name in NAMES:
        link = links / f"{name}.gguf"
        link.symlink_to(smollm2_path)
        args += ["--model", str(link)]
    proc = cached_server(
        tmp_path_factory,
        "lifecycle-server",
        model_cache,
        *args,
        "--parallel", "2",
        "--max-loaded-models", "2",
    )  # fmt: skip
    with running(proc):
        yield proc


def rows(server: ServerProcess) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{server.url}/models", timeout=30)
    assert response.status_code == 200
    return {r["id"]: r for r in response.json()["data"]}


def status(server: ServerProcess, name: str) -> str:
    return str(rows(server)[name]["status"]["value"])


def load(server: ServerProcess, name: str, **extra: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/models/load", json={"model": name, **extra}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    return dict(body["model"])


def unload(server: ServerProcess, name: str) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/models/unload", json={"model": name}, timeout=120)
    assert response.status_code == 200, response.text
    return dict(response.json()["model"])


def test_models_lists_every_model_with_its_status(server: ServerProcess) -> None:
    listed = rows(server)
    assert set(NAMES) <= set(listed)
    first = listed["alpha"]  # the first model loads at start
    assert first["status"] == {"value": "loaded", "failed": False, "error": None}
    assert first["memory"] > 0 and first["n_ctx"] == 4096 and first["served"] is True
    for name in NAMES:
        assert listed[name]["status"]["value"] in ("loaded", "unloaded")
        assert listed[name]["size"] > 0


def test_load_and_unload_change_the_status(server: ServerProcess) -> None:
    row = load(server, "beta")
    assert row["status"]["value"] == "loaded" and row["memory"] > 0
    assert status(server, "beta") == "loaded"
    row = unload(server, "beta")
    assert row["status"]["value"] == "unloaded" and row["memory"] == 0
    assert status(server, "beta") == "unloaded"


def test_unknown_models_are_404_in_openai_envelope(server: ServerProcess) -> None:
    for path in ("/models/load", "/models/unload"):
        response = httpx.post(f"{server.url}{path}", json={"model": "no-such-model"}, timeout=30)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"
    response = httpx.post(f"{server.url}/models/load", json={}, timeout=30)
    assert response.status_code == 400
    assert httpx.get(f"{server.url}/props", params={"model": "nope"}).status_code == 404
    assert httpx.get(f"{server.url}/slots", params={"model": "nope"}).status_code == 404


class EventReader:
    """Reads /models/sse in a thread, as EventSource would (Accept: text/event-stream)."""

    def __init__(self, url: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        headers = {"Accept": "text/event-stream"}
        with httpx.stream("GET", f"{url}/models/sse", headers=headers, timeout=None) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    self.events.append(json.loads(line[5:]))
                if self._stop.is_set():
                    return

    def wait_for(self, name: str, value: str, after: int = 0, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events[after:], start=after):
                if event["id"] == name and event["status"]["value"] == value:
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no {value!r} event for {name}: {self.events}")

    def close(self) -> None:
        self._stop.set()


def test_status_events_follow_loads_and_unloads(server: ServerProcess) -> None:
    reader = EventReader(server.url)
    try:
        # first one event per known model, with its current status
        reader.wait_for("alpha", "loaded")
        first = reader.wait_for("gamma", "unloaded")
        load(server, "gamma")
        loaded = reader.wait_for("gamma", "loaded", after=first + 1)
        unload(server, "gamma")
        reader.wait_for("gamma", "unloaded", after=loaded + 1)
    finally:
        reader.close()
    # without Accept: text/event-stream the stream ends after the current statuses
    response = httpx.get(f"{server.url}/models/sse", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    ids = [json.loads(line[5:])["id"] for line in response.text.splitlines() if line[:5] == "data:"]
    assert set(NAMES) <= set(ids)


def test_unload_waits_for_a_streaming_request(server: ServerProcess) -> None:
    load(server, "beta")
    body = {
        "model": "beta",
        "messages": [{"role": "user", "content": "Tell me about rivers."}],
        "max_tokens": 32,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    unloaded_at: list[float] = []
    slots_seen: list[list[dict[str, Any]]] = []

    def unload_now() -> None:
        unload(server, "beta")
        unloaded_at.append(time.monotonic())

    chunks: list[dict[str, Any]] = []
    worker = None
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunks.append(json.loads(line[5:]))
            if worker is None:
                slots_seen.append(httpx.get(f"{server.url}/slots?model=beta").json())
                worker = threading.Thread(target=unload_now)
                worker.start()
        finished_at = time.monotonic()
    assert worker is not None
    worker.join(60)
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 32  # the whole answer came
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    assert reasons[-1] == "length"
    assert unloaded_at and unloaded_at[0] >= finished_at - 0.5
    assert status(server, "beta") == "unloaded"
    # while it streamed, /slots showed the request in a slot
    busy = [s for s in slots_seen[0] if s["is_processing"]]
    assert len(busy) == 1 and busy[0]["state"] == "processing" and busy[0]["request_id"]


def test_a_pinned_model_survives_eviction(server: ServerProcess) -> None:
    load(server, "alpha", pin=True)
    load(server, "beta")
    assert {n for n, r in rows(server).items() if r["status"]["value"] == "loaded"} == {
        "alpha",
        "beta",
    }
    # room for two: gamma evicts the least recently used model that is not pinned
    load(server, "gamma")
    listed = rows(server)
    assert listed["alpha"]["status"]["value"] == "loaded" and listed["alpha"]["pinned"]
    assert listed["beta"]["status"]["value"] == "unloaded"
    assert listed["gamma"]["status"]["value"] == "loaded"
    # alpha is now the least recently used, but pinned: gamma goes instead
    time.sleep(0.05)
    load(server, "beta")
    listed = rows(server)
    assert listed["alpha"]["status"]["value"] == "loaded"
    assert listed["gamma"]["status"]["value"] == "unloaded"
    # keep_alive -1 pins too; unloading releases the pin
    assert load(server, "gamma", keep_alive=-1)["pinned"] is True
    assert listed["beta"]["status"]["value"] == "loaded"
    assert status(server, "beta") == "unloaded"
    assert unload(server, "gamma")["pinned"] is False


def test_props_and_slots(server: ServerProcess) -> None:
    props = httpx.get(f"{server.url}/props", params={"model": "alpha"}, timeout=60).json()
    assert props["model"] == "alpha"
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 4096
    assert "temperature" in props["default_generation_settings"]["params"]
    assert "<|im_start|>" in props["chat_template"]
    assert props["modalities"] == {"vision": False, "audio": False}
    assert "completion" in props["capabilities"] and props["build_info"].startswith("ggufworker")
    slots = httpx.get(f"{server.url}/slots", params={"model": "alpha"}).json()
    assert [s["id"] for s in slots] == [0, 1]
    assert all(s["state"] == "idle" and s["n_ctx"] == 4096 for s in slots)
    ok = httpx.get(f"{server.url}/slots", params={"model": "alpha", "fail_on_no_slot": 1})
    assert ok.status_code == 200
    # an unloaded model has no slots: 503 for a probe that needs a free one
    unload(server, "beta")
    assert httpx.get(f"{server.url}/slots", params={"model": "beta"}).json() == []
    none = httpx.get(f"{server.url}/slots", params={"model": "beta", "fail_on_no_slot": "1"})
    assert none.status_code == 503 and none.json()["error"]["code"] == "no_slot_available"


def test_root_negotiates_between_ollama_and_browsers(server: ServerProcess) -> None:
    assert httpx.get(server.url).text == "Ollama is running"
    browser = httpx.get(server.url, headers={"Accept": "text/html,*/*;q=0.8"})
    assert browser.status_code == 307 and browser.headers["location"] == "/ui"
    page = httpx.get(f"{server.url}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for name, media in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = httpx.get(f"{server.url}/ui/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
    assert httpx.get(f"{server.url}/ui/assets/secret.py").status_code == 404
