"""Operations end to end: /metrics, /execute worker events, readiness callback, tokenize,
embeddings, health."""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import openai

from tests.conftest import SMOLLM2
from tests.server.conftest import COMMON, CallbackListener, ServerProcess, cached_server, free_port


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_count_what_happened(main_server: ServerProcess) -> None:
    url = f"{main_server.url}/metrics"
    before = httpx.get(url).text
    ok = 'endpoint="/v1/completions",status="200"'
    bad = 'endpoint="/v1/completions",status="404"'
    model = f'model="{SMOLLM2}"'
    client = openai.OpenAI(base_url=f"{main_server.url}/v1", api_key="x", max_retries=0)
    usages = [
        client.completions.create(model=SMOLLM2, prompt=p, max_tokens=5, temperature=0).usage
        for p in ("One", "Two", "Three")
    ]
    try:
        client.completions.create(model="nope", prompt="x")
    except openai.NotFoundError:
        pass
    after = httpx.get(url).text
    assert httpx.get(url).headers["content-type"].startswith("text/plain")

    def delta(name: str, labels: str) -> float:
        return _metric(after, name, labels) - _metric(before, name, labels)

    assert delta("ggufworker_requests_total", ok) == 3
    assert delta("ggufworker_requests_total", bad) == 1
    assert delta("ggufworker_generation_tokens_total", model) == sum(
        u.completion_tokens for u in usages
    )
    assert delta("ggufworker_prompt_tokens_total", model) == sum(u.prompt_tokens for u in usages)
    assert delta("ggufworker_time_to_first_token_seconds_count", model) == 3
    assert delta("ggufworker_inter_token_latency_seconds_count", model) == 3 * 4
    assert _metric(after, "ggufworker_slots", model) == 8
    assert _metric(after, "ggufworker_busy_slots", model) == 0
    assert _metric(after, "ggufworker_queue_depth", model) == 0
    assert _metric(after, "ggufworker_models_loaded") >= 1


def _sse(response: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def test_execute_streams_worker_events(main_server: ServerProcess) -> None:
    prompt = "The three primary colors are"
    job = {"job_id": "job-42", "prompt": prompt, "max_tokens": 12, "temperature": 0, "seed": 1}
    with httpx.stream("POST", f"{main_server.url}/execute", json=job, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r)
    assert events[0]["type"] == "started" and events[0]["job_id"] == "job-42"
    tokens = [e for e in events if e["type"] == "token"]
    end = events[-1]
    assert end["type"] == "end" and end["stop_reason"] == "length"
    assert end["tokens_out"] == 12 == len(tokens)
    assert [t["i"] for t in tokens] == list(range(12))
    assert end["decode_time_ms"] > 0
    reference = httpx.post(
        f"{main_server.url}/v1/completions",
        json={"model": SMOLLM2, "prompt": prompt, "max_tokens": 12, "temperature": 0},
        timeout=60,
    ).json()
    assert "".join(t["t"] for t in tokens) == reference["choices"][0]["text"]


def test_execute_rejects_bad_jobs(main_server: ServerProcess) -> None:
    r = httpx.post(f"{main_server.url}/execute", json={"prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "job_id"


def test_readiness_callback_reaches_listener(
    main_server: ServerProcess, callback_listener: CallbackListener
) -> None:
    deadline = time.monotonic() + 20
    while not any(b.get("model") == SMOLLM2 for b in callback_listener.bodies):
        assert time.monotonic() < deadline, f"no callback: {callback_listener.bodies}"
        time.sleep(0.05)
    body = next(b for b in callback_listener.bodies if b["model"] == SMOLLM2)
    assert body == {
        "worker_id": "worker-under-test",
        "url": main_server.url,
        "model": SMOLLM2,
        "backend": body["backend"],
        "slots": 8,
    }
    assert isinstance(body["backend"], str) and body["backend"]


def test_readiness_callback_retries_until_listener_is_up(
    smollm2_path, model_cache, tmp_path_factory
) -> None:
    """The callback URL is dead when the server becomes ready; a later listener still gets it."""
    port = free_port()
    server = cached_server(
        tmp_path_factory,
        "retry-server",
        model_cache,
        "--parallel", "2",
        "--worker-id", "late",
        "--callback-url", f"http://127.0.0.1:{port}/ready",
    )  # fmt: skip
    listener = None
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/health").status_code == 200  # serving despite the dead URL
        time.sleep(0.7)  # let at least one try fail
        listener = CallbackListener(port=port)
        deadline = time.monotonic() + 20
        while not listener.bodies:
            assert time.monotonic() < deadline, "callback never retried"
            time.sleep(0.05)
        assert listener.bodies[0]["worker_id"] == "late"
        assert "failed" in server.log()
    finally:
        server.stop()
        if listener is not None:
            listener.close()


def test_tokenize_detokenize_round_trip(main_server: ServerProcess) -> None:
    text = "Hello, world! Ünïcödé 🙂"
    ids = httpx.post(f"{main_server.url}/tokenize", json={"content": text}).json()["tokens"]
    assert ids and all(isinstance(i, int) for i in ids)
    back = httpx.post(f"{main_server.url}/detokenize", json={"tokens": ids}).json()["content"]
    assert back == text
    pieces = httpx.post(
        f"{main_server.url}/tokenize", json={"content": text, "with_pieces": True}
    ).json()["tokens"]
    assert [p["id"] for p in pieces] == ids


def test_embeddings(main_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{main_server.url}/v1", api_key="x", max_retries=0)
    r = client.embeddings.create(model=SMOLLM2, input=["a cat sat", "a cat sat", "stock markets"])
    vecs = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == SMOLLM2
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-3 for v in vecs)
    assert vecs[0] == vecs[1] and vecs[0] != vecs[2]
    assert r.usage.prompt_tokens > 0


def test_health_and_models_report_state(main_server: ServerProcess) -> None:
    r = httpx.get(f"{main_server.url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    cards = httpx.get(f"{main_server.url}/v1/models").json()["data"]
    smol = next(c for c in cards if c["id"] == SMOLLM2)
    # tools through the generic format (any template); no thinking markers in ChatML
    assert smol["capabilities"] == ["completion", "tools", "embedding"]
    assert smol["loaded"] and smol["pinned"] and smol["meta"]["architecture"] == "llama"


def test_idle_unload_reload_and_settings_from_file_and_env(
    smollm2_path, gemma3_path, model_cache, tmp_path_factory
) -> None:
    """Two models, one pinned; the other unloads when idle and loads again on use. Settings
    come from a config file and an env var (the env var wins over the file)."""
    config = tmp_path_factory.mktemp("idle-config") / "server.yaml"
    config.write_text(
        f"model: [{SMOLLM2}, {gemma3_path}]\npin: [{SMOLLM2}]\nkeep_alive: 1.0\n"
        "parallel: 2\napi_keys: [from-file]\n"
    )
    gemma = gemma3_path.stem
    server = cached_server(
        tmp_path_factory,
        "idle-server",
        model_cache,
        "--config", str(config),
        common=[a for a in COMMON if a not in ("--keep-alive", "-1")],
        env={"GGUFWORKER_API_KEYS": "from-env"},
    )  # fmt: skip
    try:
        server.wait_ready()
        headers = {"Authorization": "Bearer from-env"}
        assert (
            httpx.get(
                f"{server.url}/v1/models", headers={"Authorization": "Bearer from-file"}
            ).status_code
            == 401
        )

        def loaded() -> dict[str, bool]:
            cards = httpx.get(f"{server.url}/v1/models", headers=headers).json()["data"]
            return {c["id"]: c["loaded"] for c in cards}

        assert loaded() == {SMOLLM2: True, gemma: False}  # the second model loads on first use
        body = {"model": gemma, "prompt": "Hello", "max_tokens": 3, "temperature": 0}
        first = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers, timeout=60)
        assert first.status_code == 200 and loaded()[gemma]
        deadline = time.monotonic() + 15
        while loaded()[gemma]:
            assert time.monotonic() < deadline, "idle model never unloaded"
            time.sleep(0.1)
        assert loaded()[SMOLLM2]  # pinned: stays
        again = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers, timeout=60)
        assert again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
    finally:
        server.stop()
