"""Speculative decoding counters at ``/metrics``, from the engine stats the scrape reads.

Named as llama-server names them (``spec_decode_num_drafts_total``, ``..._draft_tokens_total``,
``..._accepted_tokens_total``, ``..._accepted_tokens_per_pos_total{position}``) under our
prefix, with the model as a label.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from ggufworker.engine.handle import EngineStats


class SpecFamilies:
    """Drafts verified and accepted per model (all zero when a model does not speculate)."""

    def __init__(self, prefix: str) -> None:
        p = f"{prefix}_spec_decode"
        self.drafts = CounterMetricFamily(
            f"{p}_num_drafts", "verifications with at least one draft token", labels=["model"]
        )
        self.tokens = CounterMetricFamily(
            f"{p}_num_draft_tokens", "draft tokens verified", labels=["model"]
        )
        self.accepted = CounterMetricFamily(
            f"{p}_num_accepted_tokens", "draft tokens accepted", labels=["model"]
        )
        self.per_pos = CounterMetricFamily(
            f"{p}_num_accepted_tokens_per_pos",
            "draft tokens accepted at each draft position (1 is the first)",
            labels=["model", "position"],
        )

    def add(self, name: str, stats: EngineStats) -> None:
        self.drafts.add_metric([name], stats.spec_drafts)
        self.tokens.add_metric([name], stats.spec_draft_tokens)
        self.accepted.add_metric([name], stats.spec_accepted_tokens)
        for i, n in enumerate(stats.spec_accepted_per_pos, 1):
            self.per_pos.add_metric([name, str(i)], n)

    def families(self) -> Iterator[Metric]:
        yield from (self.drafts, self.tokens, self.accepted, self.per_pos)
