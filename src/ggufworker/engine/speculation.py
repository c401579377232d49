"""Speculative decoding inside the batched scheduler: drafts, the per-step plan, the counters.

A speculating slot decodes, in the step's ordinary mixed batch, its sampled token followed by k
draft tokens, every one with logits. The scheduler then walks the rows in order: the target's
token at each position is drawn exactly as without speculation (the argmax for greedy requests,
the request's own :class:`~ggufworker.engine.batch_sampling.RowSampler` with one uniform per
token for sampled ones); while it equals the draft, the draft token is already in the KV cache
and the walk goes on; the first token that differs (or the one after the last draft) becomes
the slot's next token, and the cells of the rejected drafts are removed with
``llama_memory_seq_rm``. Every emitted token is the target's own, so greedy output equals output
without speculation and a seeded sampled request draws the same tokens (the drafts are
deterministic, so this exact-match rule is rejection sampling with a one-hot proposal).

Drafts come from the request's own tokens (prompt lookup: the tokens that followed the last
earlier occurrence of the current n-gram, :class:`NgramIndex`) or from a small draft model
sharing the vocabulary (:mod:`ggufworker.engine.speculation_draft`).

How many drafts each slot gets is decided per step by :class:`SpecPlanner`: the step's time is
modelled as linear in its token count, ``T(n) = T1 * (1 + beta * (n - 1))``, with ``beta``
fitted from the scheduler's own decode timings; each slot's per-token acceptance ``a`` is
estimated from its recent verifications; draft positions are added best first (a slot's i-th
draft is worth ``a**i`` expected tokens) while they raise the step's expected tokens per
second. A large batch makes each extra row dear relative to what it adds, so speculation
turns itself off under load, and a slot whose drafts keep failing stops drafting (with a
one-token probe now and then to notice when copying resumes).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Literal

SpecMode = Literal["none", "ngram", "draft"]

#: llama-server's ``--spec-type`` names accepted as aliases of ours
SPEC_TYPE_ALIASES = {
    "none": "none",
    "off": "none",
    "ngram": "ngram",
    "ngram-simple": "ngram",
    "draft": "draft",
    "draft-simple": "draft",
}


@dataclass(frozen=True)
class SpeculationOptions:
    """How an engine speculates.

    Attributes:
        mode: ``none``, ``ngram`` (prompt lookup over the request's own tokens) or ``draft``
            (a draft model, ``draft_model``).
        draft_model: the draft GGUF (same vocabulary as the target) for ``mode="draft"``.
        n_max: most draft tokens per slot and step.
        n_min: a slot's draft shorter than this is not verified (0: any length).
        ngram_sizes: the n-gram lengths prompt lookup matches, longest first.
        beta: the prior marginal cost of one more token in a decode, relative to a one-token
            decode, used until the scheduler's timings fit it (None: 0.02 on a GPU, 0.6 on the
            CPU: SmolLM2-135M on 2 cores decodes 2 tokens of one sequence in 1.67x the time of
            one, 16 in 9.2x).
        adaptive: plan draft lengths from acceptance and cost; False drafts ``n_max`` whenever
            a draft exists (for measurements).
    """

    mode: SpecMode = "none"
    draft_model: str | None = None
    n_max: int = 16
    n_min: int = 0
    ngram_sizes: tuple[int, ...] = (4, 3, 2)
    beta: float | None = None
    adaptive: bool = True

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


def spec_mode(name: str) -> SpecMode:
    """Our mode for a ``--spec-type`` value (ours or llama-server's names).

    Raises:
        ValueError: an unknown name.
    """
    mode = SPEC_TYPE_ALIASES.get(name.strip().lower())
    if mode is None:
        raise ValueError(
            f"unknown speculation type {name!r}; choose one of {', '.join(SPEC_TYPE_ALIASES)}"
        )
    return mode  # type: ignore[return-value]


class NgramIndex:
    """Prompt lookup over one request's tokens: the latest earlier end of each n-gram.

    The history only grows while a request runs (accepted tokens are appended), so the index
    is extended incrementally; a new request in the slot starts a new index. A copy goes on
    where it left off: when the token after the last draft's accepted part is the source's next
    token too, the next draft continues from the same source (code repeats its n-grams, and
    the latest occurrence of one is often another place than the one being copied).
    """

    __slots__ = ("sizes", "maps", "hist", "_src", "_at")

    def __init__(self, sizes: tuple[int, ...]) -> None:
        self.sizes = sizes
        self.maps: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in sizes}
        self.hist: list[int] = []
        self._src = -1  # history index the last draft's first token came from
        self._at = -1  # sequence position of that first draft token

    def extend(self, tokens: list[int]) -> None:
        """Index ``tokens[len(hist):]`` (``tokens`` extends the history indexed so far)."""
        h = self.hist
        start = len(h)
        h.extend(tokens[start:])
        for n, table in self.maps.items():
            for e in range(max(start, n - 1), len(h)):
                table[tuple(h[e - n + 1 : e + 1])] = e

    def lookup(self, last: int, k: int) -> list[int]:
        """Up to ``k`` tokens to follow the history plus ``last``: the copy in progress, else
        what followed the latest earlier occurrence of the n-gram ending with ``last``
        (longest n-gram first); [] when none."""
        h = self.hist
        pos = len(h)  # the sequence position of ``last``
        if self._src >= 0:
            src = self._src + (pos - self._at)  # where ``last`` sits in the copied source
            if src + 1 < pos and h[src] == last:
                return self._take(src, pos, k)
        for n in self.sizes:
            if len(h) < n:
                continue
            key = (*h[len(h) - n + 1 :], last) if n > 1 else (last,)
            end = self.maps[n].get(key)
            if end is not None and end + 1 < len(h):
                return self._take(end, pos, k)
        self._src = -1
        return []

    def _take(self, src: int, pos: int, k: int) -> list[int]:
        self._src, self._at = src + 1, pos + 1
        return self.hist[src + 1 : src + 1 + k]


@dataclass
class SlotSpec:
    """One slot's speculation state: its acceptance history and n-gram index."""

    accepted: float = 0.0  # decayed accepted draft tokens
    tried: float = 0.0  # decayed draft positions tested (up to and including a rejection)
    idle: int = 0  # plans in a row that gave this slot no draft although one existed
    index: NgramIndex | None = None
    owner: object = None  # the request these belong to (a new request starts afresh)

    def rate(self, prior: float = 0.5, weight: float = 2.0) -> float:
        """Estimated probability that the next draft token is accepted."""
        return (self.accepted + prior * weight) / (self.tried + weight)

    def record(self, drafted: int, accepted: int, decay: float = 0.8) -> None:
        self.accepted = self.accepted * decay + accepted
        self.tried = self.tried * decay + min(drafted, accepted + 1)


class StepCost:
    """Decode time as a linear function of the batch's token count, fitted with exponentially
    weighted least squares over the scheduler's decode-only steps."""

    def __init__(self, beta_prior: float, decay: float = 0.97) -> None:
        self.beta_prior = beta_prior
        self.decay = decay
        self.w = self.sn = self.snn = self.st = self.snt = 0.0

    def observe(self, n_tokens: int, seconds: float) -> None:
        d = self.decay
        self.w = self.w * d + 1.0
        self.sn = self.sn * d + n_tokens
        self.snn = self.snn * d + n_tokens * n_tokens
        self.st = self.st * d + seconds
        self.snt = self.snt * d + n_tokens * seconds

    def fit(self) -> tuple[float, float]:
        """(seconds of a one-token decode, beta); beta is the prior until the observed token
        counts vary enough to fit a slope."""
        if self.w <= 0:
            return 0.0, self.beta_prior
        mn, mt = self.sn / self.w, self.st / self.w
        var = self.snn / self.w - mn * mn
        beta = self.beta_prior
        if var >= 0.25:
            slope = (self.snt / self.w - mn * mt) / var
            t1 = mt - slope * (mn - 1)
            if t1 > 0 and slope > 0:
                beta = min(max(slope / t1, 0.002), 4.0)
        t1 = mt / (1 + beta * (mn - 1))
        return t1, beta


@dataclass
class SpecCounters:
    """Lifetime counters, llama-server's ``spec_decode_*`` metrics."""

    drafts: int = 0  # verifications with at least one draft token
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)

    def count(self, drafted: int, accepted: int) -> None:
        self.drafts += 1
        self.draft_tokens += drafted
        self.accepted_tokens += accepted
        per = self.accepted_per_pos
        if len(per) < accepted:
            per.extend([0] * (accepted - len(per)))
        for i in range(accepted):
            per[i] += 1


class SpecPlanner:
    """Chooses each speculating slot's draft length for one step (see the module doc)."""

    PROBE_AFTER = 16  # plans without a draft before a lone slot is given one token anyway

    def __init__(self, opts: SpeculationOptions, *, gpu: bool) -> None:
        self.opts = opts
        prior = opts.beta if opts.beta is not None else (0.02 if gpu else 0.6)
        self.cost = StepCost(prior)
        self.draft_seconds = 0.0  # EMA of one draft-model decode (draft mode)

    def observe_draft(self, seconds: float) -> None:
        d = self.draft_seconds
        self.draft_seconds = seconds if d == 0 else 0.8 * d + 0.2 * seconds

    def plan(
        self, n_base: int, offers: list[tuple[SlotSpec, int]], *, shared_depth: bool = False
    ) -> list[int]:
        """Draft lengths for ``offers`` ((slot state, drafts available) pairs) in a step that
        already decodes ``n_base`` tokens; ``shared_depth``: each new draft depth costs one
        sequential draft-model decode besides the verification."""
        opts = self.opts
        ks = [0] * len(offers)
        if not offers:
            return ks
        if not opts.adaptive:
            return [min(avail, opts.n_max) for _, avail in offers]
        t1, beta = self.cost.fit()
        depth_cost = self.draft_seconds / t1 if shared_depth and t1 > 0 else 0.0
        expect = float(max(n_base, 1))  # expected tokens of the step (one per decoding slot)
        cost = 1.0 + beta * (max(n_base, 1) - 1)  # step time in one-token decodes
        rates = [spec.rate() for spec, _ in offers]
        heap = [(-rates[i], i) for i, (_, avail) in enumerate(offers) if avail > 0]
        heapq.heapify(heap)
        depth = 0
        while heap:
            neg_gain, i = heapq.heappop(heap)
            gain = -neg_gain
            extra = beta + (depth_cost if ks[i] + 1 > depth else 0.0)
            if (expect + gain) * cost <= expect * (cost + extra):
                break  # the best remaining draft token no longer pays for its row
            expect += gain
            cost += extra
            ks[i] += 1
            depth = max(depth, ks[i])
            if ks[i] < min(offers[i][1], opts.n_max):
                heapq.heappush(heap, (-(gain * rates[i]), i))
        for i, (spec, avail) in enumerate(offers):
            if avail <= 0:
                continue
            if ks[i] == 0:
                spec.idle += 1
                # look again now and then (copying may have resumed): about one probe per
                # PROBE_AFTER steps over the whole batch, so a full batch pays almost nothing
                if spec.idle >= self.PROBE_AFTER * max(1, n_base):
                    ks[i] = 1
                    spec.idle = 0
            else:
                spec.idle = 0
            if ks[i] < opts.n_min:
                ks[i] = 0
        return ks
