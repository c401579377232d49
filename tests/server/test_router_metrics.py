"""The vLLM-named gauges Kubernetes routers read (server/core/router_metrics.py): names and
labels as vLLM exports them, values from the engines, and (end to end) their movement under
load on a real server."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ggufworker.engine.handle import EngineStats
from ggufworker.server.core.router_metrics import RouterGaugeCollector
from tests.conftest import SMOLLM2
from tests.server.conftest import DISTINCT_PROMPTS, ServerProcess

ROUTER_GAUGES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
)


@dataclass
class _Engine:
    busy: int = 0
    queued: int = 0
    usage: float = 0.0
    adapters: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    def stats(self) -> EngineStats:
        return EngineStats(4, self.busy, self.queued, 8, 0, 0)

    def kv_usage(self) -> float:
        return self.usage

    def loras(self) -> list[Any]:
        return list(self.adapters)

    def lora_activity(self) -> tuple[list[str], list[str]]:
        return self.running, self.waiting


@dataclass
class _Spec:
    name: str
    embedding: bool = False


@dataclass
class _Model:
    spec: _Spec
    engine: Any
    state: str = "ready"


class _Manager:
    def __init__(self, *models: _Model) -> None:
        self.models = list(models)

    def all_models(self) -> list[_Model]:
        return self.models


def _scrape(manager: _Manager) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(RouterGaugeCollector(lambda: manager))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        f.name: [(s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def test_gauges_carry_vllm_names_and_labels() -> None:
    chat = _Engine(busy=3, queued=2, usage=0.25)
    other = _Engine(busy=1, usage=0.5)
    families = _scrape(
        _Manager(
            _Model(_Spec("chat"), chat),
            _Model(_Spec("other"), other),
            _Model(_Spec("chat", embedding=True), _Engine(busy=9)),  # not a router's concern
            _Model(_Spec("cold"), None, state="unloaded"),
        )
    )
    assert families["vllm:num_requests_running"] == [
        ({"model_name": "chat"}, 3.0),
        ({"model_name": "other"}, 1.0),
    ]
    assert families["vllm:num_requests_waiting"] == [
        ({"model_name": "chat"}, 2.0),
        ({"model_name": "other"}, 0.0),
    ]
    assert families["vllm:kv_cache_usage_perc"] == [
        ({"model_name": "chat"}, 0.25),
        ({"model_name": "other"}, 0.5),
    ]
    # no adapters loaded: no LoRA info series (vLLM exports it only with LoRA on)
    assert "vllm:lora_requests_info" not in families


def test_lora_info_names_running_and_waiting_adapters() -> None:
    engine = _Engine(adapters=["a", "b", "c"], running=["a", "c"], waiting=["b"])
    before = time.time()
    [(labels, value)] = _scrape(_Manager(_Model(_Spec("base"), engine)))["vllm:lora_requests_info"]
    assert labels == {"running_lora_adapters": "a,c", "waiting_lora_adapters": "b", "max_lora": "3"}
    # the value is the scrape time, as vLLM sets it: readers keep the newest series
    assert before <= value <= time.time() + 1


def _gauges(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if family.name in ROUTER_GAUGES and s.labels.get("model_name") == SMOLLM2:
                out[family.name] = s.value
    return out


def test_gauges_move_under_load(main_server: ServerProcess) -> None:
    """Ten streams on eight slots: the scrapes taken meanwhile see requests running and
    waiting and the KV cache filling; once the streams end nothing runs or waits."""
    assert set(_gauges(main_server.url)) == set(ROUTER_GAUGES)
    client = openai.OpenAI(base_url=f"{main_server.url}/v1", api_key="x", max_retries=0)
    errors: list[BaseException] = []

    def one(prompt: str) -> None:
        try:
            client.completions.create(model=SMOLLM2, prompt=prompt, max_tokens=48, temperature=0)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    prompts = [*DISTINCT_PROMPTS, "Pelicans dive for", "Lighthouses guide"]
    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    seen: list[dict[str, float]] = []
    while any(t.is_alive() for t in threads):
        seen.append(_gauges(main_server.url))
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert not errors
    assert max(g["vllm:num_requests_running"] for g in seen) >= 2
    assert max(g["vllm:num_requests_waiting"] for g in seen) >= 1
    assert all(g["vllm:num_requests_running"] <= 8 for g in seen)
    assert 0 < max(g["vllm:kv_cache_usage_perc"] for g in seen) <= 1
    after = _gauges(main_server.url)
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:num_requests_waiting"] == 0
    # idle slots keep their prompts' KV (the prompt cache): usage stays within 0..1
    assert 0 <= after["vllm:kv_cache_usage_perc"] <= 1
