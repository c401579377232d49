"""The gauges Kubernetes LLM routers read, under vLLM's names.

llm-d's scheduler and the Gateway API Inference Extension's endpoint picker score model
servers by a few Prometheus gauges of vLLM's (their "model server protocol"): requests running,
requests waiting, KV cache usage as a 0..1 fraction, and an info gauge naming the LoRA
adapters in use. Exporting the same names and labels lets them route to ggufworker servers
with no code of ours. Values are read from the engines at scrape time, as the other engine
gauges (:mod:`ggufworker.server.core.metrics`).

- ``vllm:num_requests_running{model_name}``: requests holding a slot;
- ``vllm:num_requests_waiting{model_name}``: requests queued for one;
- ``vllm:kv_cache_usage_perc{model_name}``: KV cells holding tokens over the cells there are
  (averaged over replicas);
- ``vllm:lora_requests_info{running_lora_adapters, waiting_lora_adapters, max_lora}``: one
  series per model with adapters, its value the scrape time (as vLLM does: a reader keeps the
  newest series); adapter names comma-separated; ``max_lora`` the adapters loaded, all of which
  can run in one batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ggufworker.server.core.models import ModelManager

logger = logging.getLogger(__name__)

PREFIX = "vllm:"


def kv_usage(engine: Any) -> float | None:
    """The engine's KV cache usage (0..1), the mean over replicas; None when unknown."""
    members = [r.engine for r in getattr(engine, "replicas", None) or ()] or [engine]
    values = [float(m.kv_usage()) for m in members if hasattr(m, "kv_usage")]
    return sum(values) / len(values) if values else None


def lora_activity(engine: Any) -> tuple[list[str], list[str], int] | None:
    """(running adapter names, waiting adapter names, adapters loaded) summed over replicas;
    None when the engine holds no adapter."""
    members = [r.engine for r in getattr(engine, "replicas", None) or ()] or [engine]
    members = [m for m in members if hasattr(m, "loras") and hasattr(m, "lora_activity")]
    loaded = max((len(m.loras()) for m in members), default=0)
    if not loaded:
        return None
    running: set[str] = set()
    waiting: set[str] = set()
    for m in members:
        r, w = m.lora_activity()
        running.update(r)
        waiting.update(w)
    return sorted(running), sorted(waiting), loaded


class RouterGaugeCollector(Collector):
    """vLLM-named gauges of every loaded model (see the module doc)."""

    def __init__(self, manager: Callable[[], ModelManager | None]) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            f"{PREFIX}num_requests_running",
            "Number of requests in model execution batches.",
            labels=["model_name"],
        )
        waiting = GaugeMetricFamily(
            f"{PREFIX}num_requests_waiting",
            "Number of requests waiting to be processed.",
            labels=["model_name"],
        )
        usage = GaugeMetricFamily(
            f"{PREFIX}kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            labels=["model_name"],
        )
        lora = GaugeMetricFamily(
            f"{PREFIX}lora_requests_info",
            "Running stats on lora requests.",
            labels=["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
        )
        manager = self._manager()
        for model in manager.all_models() if manager is not None else ():
            engine = model.engine
            # generation models only (an embedding model of the same name is no router's)
            if model.state != "ready" or engine is None or model.spec.embedding:
                continue
            name = model.spec.name
            try:
                stats = engine.stats()
                running.add_metric([name], stats.busy_slots)
                waiting.add_metric([name], stats.queue_depth)
                used = kv_usage(engine)
                if used is not None:
                    usage.add_metric([name], used)
                adapters = lora_activity(engine)
            except Exception:  # a model closing under us: skip it this scrape
                logger.debug("router gauges of %s unavailable", name, exc_info=True)
                continue
            if adapters is not None:
                run, wait, loaded = adapters
                lora.add_metric([",".join(run), ",".join(wait), str(loaded)], time.time())
        yield from (running, waiting, usage)
        if lora.samples:
            yield lora
