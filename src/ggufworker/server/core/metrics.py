"""Prometheus metrics, on a registry owned by the app (no module-level collectors).

Counters and histograms are updated as requests run; engine gauges (queue depth, busy slots,
loaded models) are read from the engines at scrape time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ggufworker.server.core.replicas import replica_stats
from ggufworker.server.core.spec_metrics import SpecFamilies

if TYPE_CHECKING:
    from ggufworker.server.core.models import ModelManager

logger = logging.getLogger(__name__)

PREFIX = "ggufworker"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _EngineCollector(Collector):
    """Gauges read from the engines when Prometheus scrapes."""

    def __init__(self, manager: Callable[[], ModelManager | None]) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        manager = self._manager()
        queue = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "requests waiting for a slot", labels=["model"]
        )
        busy = GaugeMetricFamily(
            f"{PREFIX}_busy_slots", "slots decoding a request", labels=["model"]
        )
        slots = GaugeMetricFamily(
            f"{PREFIX}_slots", "sequence slots of a loaded model", labels=["model"]
        )
        loaded = GaugeMetricFamily(
            f"{PREFIX}_model_loaded", "1 when a model is loaded", labels=["model"]
        )
        labels = ["model", "replica", "device"]
        r_slots = GaugeMetricFamily(
            f"{PREFIX}_replica_slots", "sequence slots of one replica", labels=labels
        )
        r_busy = GaugeMetricFamily(
            f"{PREFIX}_replica_busy_slots", "slots of one replica decoding", labels=labels
        )
        r_queue = GaugeMetricFamily(
            f"{PREFIX}_replica_queue_depth", "requests waiting for one replica", labels=labels
        )
        r_requests = CounterMetricFamily(
            f"{PREFIX}_replica_requests", "requests one replica has finished", labels=labels
        )
        r_cached = CounterMetricFamily(
            f"{PREFIX}_replica_cached_tokens", "prompt tokens reused from one replica's KV cache",
            labels=labels,
        )  # fmt: skip
        cache = _CacheFamilies()
        spec = SpecFamilies(PREFIX)
        count = 0
        for model in manager.all_models() if manager else ():
            name = model.spec.name
            engine = model.engine
            is_loaded = model.state == "ready" and engine is not None
            loaded.add_metric([name], 1.0 if is_loaded else 0.0)
            if not is_loaded:
                continue
            count += 1
            try:
                stats = engine.stats()
            except Exception:  # a model closing under us: skip its gauges this scrape
                logger.debug("stats of %s unavailable", name, exc_info=True)
                continue
            queue.add_metric([name], stats.queue_depth)
            busy.add_metric([name], stats.busy_slots)
            slots.add_metric([name], stats.n_parallel)
            if model.spec.embedding:  # one engine, and the same name may serve chat too
                continue
            spec.add(name, stats)
            try:
                cache.add(name, engine)
            except Exception:  # a model closing under us
                logger.debug("prompt cache stats of %s unavailable", name, exc_info=True)
            try:
                for rep in replica_stats(engine):
                    values = [name, str(rep.index), rep.device]
                    r_slots.add_metric(values, rep.slots)
                    r_busy.add_metric(values, rep.busy_slots)
                    r_queue.add_metric(values, rep.queue_depth)
                    r_requests.add_metric(values, rep.requests)
                    r_cached.add_metric(values, rep.cached_tokens)
            except Exception:
                logger.debug("replica stats of %s unavailable", name, exc_info=True)
        total = GaugeMetricFamily(f"{PREFIX}_models_loaded", "number of loaded models")
        total.add_metric([], count)
        yield from (queue, busy, slots, loaded, total)
        yield from (r_slots, r_busy, r_queue, r_requests, r_cached)
        yield from cache.families()
        yield from spec.families()


class _CacheFamilies:
    """The prompt cache's metrics (engine/prompt_cache.py), summed over a model's replicas:
    lookups, hits and hit ratio per tier, bytes and entries held per tier, the RAM cap."""

    def __init__(self) -> None:
        p = f"{PREFIX}_prompt_cache"
        self.lookups = CounterMetricFamily(
            f"{p}_lookups", "requests admitted (each one a prompt cache lookup)", labels=["model"]
        )
        self.hits = CounterMetricFamily(
            f"{p}_hits", "requests whose cached tokens came from a tier (slot: the slot's own "
            "memory, checkpoint, ram, disk)", labels=["model", "tier"],
        )  # fmt: skip
        self.ratio = GaugeMetricFamily(
            f"{p}_hit_ratio", "hits / lookups, per tier and for all tiers (tier=all)",
            labels=["model", "tier"],
        )  # fmt: skip
        self.token_ratio = GaugeMetricFamily(
            f"{p}_token_ratio", "prompt tokens served from the cache / prompt tokens",
            labels=["model"],
        )  # fmt: skip
        self.bytes = GaugeMetricFamily(
            f"{p}_bytes", "bytes held per tier (ram, checkpoints kept by slots, disk)",
            labels=["model", "tier"],
        )  # fmt: skip
        self.entries = GaugeMetricFamily(
            f"{p}_entries", "states held per tier", labels=["model", "tier"]
        )
        self.cap = GaugeMetricFamily(
            f"{p}_ram_limit_bytes", "the RAM tier's cap (--cache-ram)", labels=["model"]
        )

    def add(self, name: str, engine: Any) -> None:
        members = [r.engine for r in getattr(engine, "replicas", None) or ()] or [engine]
        stats = [m.cache_stats() for m in members if hasattr(m, "cache_stats")]
        if not stats:
            return
        lookups = sum(s.lookups for s in stats)
        self.lookups.add_metric([name], lookups)
        hits_all = 0
        for tier in stats[0].hits:
            hits = sum(s.hits[tier] for s in stats)
            hits_all += hits
            self.hits.add_metric([name, tier], hits)
            self.ratio.add_metric([name, tier], hits / lookups if lookups else 0.0)
        self.ratio.add_metric([name, "all"], hits_all / lookups if lookups else 0.0)
        prompt = sum(s.prompt_tokens for s in stats)
        cached = sum(s.cached_tokens for s in stats)
        self.token_ratio.add_metric([name], cached / prompt if prompt else 0.0)
        for tier in stats[0].bytes:
            self.bytes.add_metric([name, tier], sum(s.bytes[tier] for s in stats))
            self.entries.add_metric([name, tier], sum(s.entries[tier] for s in stats))
        self.cap.add_metric([name], sum(s.ram_cap for s in stats))

    def families(self) -> Iterator[Metric]:
        yield from (self.lookups, self.hits, self.ratio, self.token_ratio)
        yield from (self.bytes, self.entries, self.cap)


class Metrics:
    """The server's metrics and their registry."""

    def __init__(self, manager: Callable[[], ModelManager | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds", "time to response end", ["endpoint"], registry=r
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "prompt tokens processed", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            f"{PREFIX}_generation_tokens", "tokens generated", ["model"], registry=r
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "time from request to first generated token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "time between generated tokens of one stream",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        r.register(_EngineCollector(manager))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Counts every HTTP request by route path (unknown paths as "other") and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
