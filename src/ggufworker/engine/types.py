"""The engine's public data types: what a caller submits and what it gets back.

These are plain dataclasses with no llama_cpp import, so the server and tests can use them
without loading llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ToolGrammar:
    """A tool-call grammar: GBNF rules (with a ``root``) that reference one rule per JSON
    schema in ``schemas`` ((rule name, schema) pairs, converted by the engine). ``lazy``
    grammars stay off until the output matches one of ``triggers`` (regexes searched in the
    output; the grammar applies from the start of the first capture group)."""

    gbnf: str
    schemas: tuple[tuple[str, str], ...] = ()
    lazy: bool = False
    triggers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReasoningBudget:
    """A cap on thinking tokens: once ``tokens`` have been generated inside the block opened
    by ``start`` (or open from the first token when ``open_at_start``), the engine writes
    ``end`` itself and the answer follows (llama-server's ``--reasoning-budget``)."""

    tokens: int
    start: str
    end: str
    open_at_start: bool = False


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (llama.cpp sampler chain).

    temperature 0 means greedy. ``logprobs`` is the number of top alternatives to return per
    token (None: no logprobs; 0: only the chosen token's logprob).
    """

    max_tokens: int | None = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    tool_grammar: ToolGrammar | None = None
    logprobs: int | None = None
    ignore_eos: bool = False
    #: output text includes control tokens (tool-call and channel markers of some families)
    render_special: bool = False
    #: most thinking tokens before the block is closed (None: no cap)
    reasoning_budget: ReasoningBudget | None = None
    #: may the engine verify draft tokens for this request (when it speculates at all)
    speculative: bool = True


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: a prompt (text or token ids) plus sampling settings.

    ``prompt`` given as text is tokenized with BOS added as the model wants and special tokens
    parsed only when ``parse_special`` is true (chat templates render special tokens; raw user
    text must never be parsed as special).
    """

    prompt: str | list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    parse_special: bool = False
    add_bos: bool = True
    request_id: str | None = None
    #: LoRA adapters to run under: (adapter name or id, scale) pairs; () is the base alone;
    #: None applies the engine's global scales (0 unless set, see Engine.set_lora_scales)
    lora: tuple[tuple[str | int, float], ...] | None = None


@dataclass(frozen=True)
class LoraInfo:
    """A loaded LoRA adapter (engine/lora.py)."""

    id: int
    name: str
    path: str
    #: the scale a request naming only this adapter gets (the server's ``BASE:NAME`` model id)
    scale: float
    #: applied to requests that carry no adapter list (llama-server's global scales)
    global_scale: float
    size_bytes: int


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenEvent:
    """One step of a request's stream.

    ``text`` is the printable delta (never a split UTF-8 character, never part of a stop
    string); it may be empty while bytes are held back. The final event has ``finish_reason``
    and ``usage`` set. ``token_id`` is None on a final event that carries no new token.
    """

    text: str
    token_id: int | None = None
    logprob: float | None = None
    top_logprobs: tuple[TopLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    time_to_first_token: float | None = None
    #: on a final event ended by a stop string: which one
    stop_sequence: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """Metadata read from a loaded GGUF."""

    path: str
    name: str
    architecture: str
    n_ctx_train: int
    n_ctx: int
    n_parallel: int
    n_vocab: int
    n_embd: int
    n_params: int
    size_bytes: int
    quantization: str
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    eos_token_ids: tuple[int, ...]
    gpu_layers: int
    backend: str
    metadata: dict[str, str] = field(default_factory=dict)
    memory: str = "kv"  # "kv", "recurrent" (fixed-size state per sequence) or "hybrid"
