"""Speculative decoding counters at ``/metrics``, read from the engines at scrape time.

Named as llama-server names them (``spec_decode_num_drafts_total``, ``..._draft_tokens_total``,
``..._accepted_tokens_total``, ``..._accepted_tokens_per_pos_total{position}``) under our
prefix, with the model as a label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ggufworker.server.core.models import ModelManager

logger = logging.getLogger(__name__)


class SpecCollector(Collector):
    """Drafts verified and accepted per model (all zero when a model does not speculate)."""

    def __init__(self, manager: Callable[[], ModelManager | None], prefix: str) -> None:
        self._manager = manager
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        p = f"{self._prefix}_spec_decode"
        drafts = CounterMetricFamily(
            f"{p}_num_drafts", "verifications with at least one draft token", labels=["model"]
        )
        tokens = CounterMetricFamily(
            f"{p}_num_draft_tokens", "draft tokens verified", labels=["model"]
        )
        accepted = CounterMetricFamily(
            f"{p}_num_accepted_tokens", "draft tokens accepted", labels=["model"]
        )
        per_pos = CounterMetricFamily(
            f"{p}_num_accepted_tokens_per_pos",
            "draft tokens accepted at each draft position (1 is the first)",
            labels=["model", "position"],
        )
        manager = self._manager()
        for model in manager.all_models() if manager else ():
            engine = model.engine
            if model.spec.embedding or model.state != "ready" or engine is None:
                continue
            try:
                stats = engine.stats()
            except Exception:  # a model closing under us
                logger.debug("stats of %s unavailable", model.spec.name, exc_info=True)
                continue
            name = model.spec.name
            # engines in another process or another API version may not count drafts
            drafts.add_metric([name], getattr(stats, "spec_drafts", 0))
            tokens.add_metric([name], getattr(stats, "spec_draft_tokens", 0))
            accepted.add_metric([name], getattr(stats, "spec_accepted_tokens", 0))
            for i, n in enumerate(getattr(stats, "spec_accepted_per_pos", ()), 1):
                per_pos.add_metric([name, str(i)], n)
        yield from (drafts, tokens, accepted, per_pos)
