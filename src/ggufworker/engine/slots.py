"""Per-request and per-slot state the scheduler keeps (plain data, no llama.cpp calls)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ggufworker.engine.batch_sampling import RowSampler
from ggufworker.engine.budget import ThinkingBudget
from ggufworker.engine.handle import RequestHandle
from ggufworker.engine.prompt_cache import Checkpoint
from ggufworker.engine.speculation import SlotSpec
from ggufworker.engine.text import TextStream
from ggufworker.engine.types import SamplingParams


@dataclass(eq=False)
class Request:
    """A request as the scheduler sees it (prompt already tokenized, chain already built)."""

    id: str
    tokens: list[int]
    params: SamplingParams
    chain: int
    handle: RequestHandle
    t_submit: float = field(default_factory=time.perf_counter)
    # Greedy without penalties or grammar: argmax over the step's logits (plus logit_bias) in
    # numpy instead of llama_sampler_sample, which copies the whole vocabulary into a
    # candidate array per token (~0.5 MB for a 49k vocabulary, 1.5 MB for 128k). Same token:
    # both take the first maximum.
    greedy: bool = False
    bias: tuple[np.ndarray, np.ndarray] | None = None  # logit_bias of a greedy request
    # Sampled without a grammar: drawn with every such row of the step at once in numpy
    # (engine/batch_sampling.py) instead of a llama.cpp chain per request.
    sampler: RowSampler | None = None
    # Backend sampling (the scheduler gives the request its slot's chain in llama.cpp's graph
    # at admission; ``chain`` then belongs to the slot): "cut" takes the row's top 64 from the
    # graph's shared cut of all such rows (engine/graph_cut.py), "top-k" cuts the row to its
    # top-k in the graph (after bias and penalties), and ``sampler`` draws from those
    # candidates on the host; "chain" runs the whole chain in the graph (top-k off, or greedy
    # with penalties).
    # ``attached`` is the slot's sequence id, -1 when not attached.
    backend: str = ""
    attached: int = -1
    # the thinking budget's tracker (engine/budget.py), when the request has a cap
    budget: ThinkingBudget | None = None
    # the LoRA adapter set it runs under ((adapter id, scale) pairs; () is the base)
    lora_key: tuple[tuple[int, float], ...] = ()
    # may draft tokens be verified for it (engine/spec_slots.py): greedy or row-sampled, no
    # logprobs, no thinking budget, not backend-sampled, not turned off by the request
    speculative: bool = False


@dataclass(eq=False)
class Slot:
    """One sequence id of the KV cache and the request (if any) running in it."""

    seq: int
    cache: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    req: Request | None = None
    prefill_pos: int = 0  # next prompt index to feed
    next_token: int = -1  # sampled, not yet decoded (-1: still in prefill)
    out_idx: int = -1  # batch index of this slot's logits in the current step
    out_row: int = -1  # row of those logits among the step's outputs
    n_fed: int = 0  # prompt tokens this step's batch holds for this slot
    n_gen: int = 0
    n_cached: int = 0
    stream: TextStream | None = None
    first_event: bool = True
    last_used: float = 0.0
    # Sampled token whose text and event are not made yet: (token, logprob, top, time).
    pending: tuple | None = None
    # Backend sampling: the chain attached to this sequence id in llama.cpp's graph (0: none)
    # and the parameters it was built for. It stays attached between requests with the same
    # parameters: attaching or detaching makes llama.cpp re-plan its compute graph.
    chain: int = 0
    chain_key: tuple | None = None
    # Prompt cache (engine/cache_tiers.py): partial-state snapshots of this sequence (memory
    # that cannot be cut back resumes from them), ascending by tokens consumed, and the prompt
    # positions at which the running prefill still takes one.
    checkpoints: list[Checkpoint] = field(default_factory=list)
    ckpt_plan: list[int] = field(default_factory=list)
    # the LoRA adapter set this sequence's memory was computed under (engine/lora.py)
    lora_key: tuple[tuple[int, float], ...] = ()
    # speculation (engine/spec_slots.py): this step's draft tokens, decoded after next_token,
    # and the slot's acceptance history and n-gram index
    draft: list[int] = field(default_factory=list)
    spec: SlotSpec = field(default_factory=SlotSpec)


def common_prefix(a: list[int], b: list[int], chunk: int = 256) -> int:
    """Length of the common prefix of two token lists: whole chunks compared as slices
    (C speed), then token by token inside the first chunk that differs."""
    n = min(len(a), len(b))
    i = 0
    while i + chunk <= n and a[i : i + chunk] == b[i : i + chunk]:
        i += chunk
    while i < n and a[i] == b[i]:
        i += 1
    return i
