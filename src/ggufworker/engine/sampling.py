"""Per-request sampler chains built from llama.cpp's samplers, and logprobs.

Every request that samples, or has penalties or a grammar, gets its own ``llama_sampler`` chain
(the chain keeps per-request state: RNG, penalty history, grammar stack). Greedy requests with at
most a ``logit_bias`` need no state: the scheduler takes their argmax in numpy
(:func:`biased_argmax`), which picks the token llama.cpp's logit-bias + greedy samplers pick.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
from collections.abc import Callable

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.types import SamplingParams, ToolGrammar, TopLogprob
from ggufworker.errors import InvalidRequestError

logger = logging.getLogger(__name__)

MAX_LOGPROBS = 20


def validate(params: SamplingParams, n_vocab: int) -> None:
    """Reject sampling settings llama.cpp would misbehave on.

    Raises:
        InvalidRequestError: naming the offending parameter.
    """

    def bad(param: str, why: str) -> InvalidRequestError:
        return InvalidRequestError(f"{param}: {why}", param=param)

    if params.max_tokens is not None and params.max_tokens < 1:
        raise bad("max_tokens", "must be at least 1")
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise bad("temperature", "must be a finite number >= 0")
    if not 0 < params.top_p <= 1:
        raise bad("top_p", "must be in (0, 1]")
    if not 0 <= params.min_p <= 1:
        raise bad("min_p", "must be in [0, 1]")
    if params.top_k < 0:
        raise bad("top_k", "must be >= 0")
    if params.repeat_penalty <= 0 or not math.isfinite(params.repeat_penalty):
        raise bad("repeat_penalty", "must be > 0")
    for name in ("presence_penalty", "frequency_penalty"):
        if not math.isfinite(getattr(params, name)):
            raise bad(name, "must be finite")
    if params.logprobs is not None and not 0 <= params.logprobs <= MAX_LOGPROBS:
        raise bad("logprobs", f"must be between 0 and {MAX_LOGPROBS}")
    for tok, bias in params.logit_bias.items():
        if not 0 <= int(tok) < n_vocab:
            raise bad("logit_bias", f"token id {tok} is outside the vocabulary (0..{n_vocab - 1})")
        if math.isnan(bias):
            raise bad("logit_bias", "bias must be a number")
    if params.grammar is not None and params.json_schema is not None:
        raise bad("grammar", "give either a grammar or a JSON schema, not both")
    if params.tool_grammar is not None and (params.grammar or params.json_schema is not None):
        raise bad("grammar", "a grammar or response_format cannot be combined with forced tools")


def tool_gbnf(tool: ToolGrammar) -> str:
    """The complete GBNF of a tool-call grammar: its own rules plus one rule per argument
    schema, converted by llama-cpp-python's JSON-schema converter into one shared rule set.

    Raises:
        InvalidRequestError: a tool's parameters cannot be converted (``param="tools"``).
    """
    from llama_cpp.llama_grammar import SchemaConverter

    conv = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        for rule, schema_text in tool.schemas:
            schema = conv.resolve_refs(json.loads(schema_text), "tools")
            made = conv.visit(schema, rule)
            if made != rule:
                conv._rules[rule] = made  # keep the name the tool rules reference
    except Exception as exc:  # the converter raises plain Exceptions of several kinds
        raise InvalidRequestError(
            f"tool parameters cannot be converted to a grammar: {exc}", param="tools"
        ) from exc
    return tool.gbnf + "\n" + conv.format_grammar()


def grammar_for(params: SamplingParams) -> str | None:
    """The GBNF grammar a request asks for (JSON schema converted by llama-cpp-python)."""
    if params.tool_grammar is not None:
        return tool_gbnf(params.tool_grammar)
    if params.grammar is not None:
        return params.grammar
    if params.json_schema is None:
        return None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(params.json_schema))
    except Exception as exc:  # the converter raises plain Exceptions of several kinds
        raise InvalidRequestError(
            f"json_schema cannot be converted to a grammar: {exc}", param="response_format"
        ) from exc


def is_plain_greedy(params: SamplingParams) -> bool:
    """True when sampling is an argmax over the logits plus any ``logit_bias`` (temperature 0,
    no penalties or grammar): done in numpy, see :func:`biased_argmax`."""
    return (
        params.temperature <= 0
        and not _has_penalties(params)
        and params.grammar is None
        and params.json_schema is None
        and params.tool_grammar is None
    )


def _has_penalties(params: SamplingParams) -> bool:
    return (
        params.repeat_penalty != 1.0
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
    )


def bias_arrays(params: SamplingParams) -> tuple[np.ndarray, np.ndarray] | None:
    """``logit_bias`` as (token ids ascending, biases) arrays, or None when there is none."""
    if not params.logit_bias:
        return None
    items = sorted((int(t), float(b)) for t, b in params.logit_bias.items())
    ids = np.array([t for t, _ in items], dtype=np.int64)
    return ids, np.array([b for _, b in items], dtype=np.float32)


def biased_argmax(row: np.ndarray, ids: np.ndarray, bias: np.ndarray) -> int:
    """Index of the largest ``row[i] + bias`` (bias 0 off ``ids``), the first one on ties, as
    llama.cpp's logit-bias then greedy samplers choose; without copying the row.

    ``row`` is changed during the call and restored before it returns.
    """
    saved = row[ids].copy()
    row[ids] = -np.inf
    try:
        j = int(row.argmax())
        best = float(row[j])
    finally:
        row[ids] = saved
    cand = saved + bias
    k = int(cand.argmax())
    if cand[k] > best or (cand[k] == best and ids[k] < j):
        return int(ids[k])
    return j


def build_chain(
    params: SamplingParams, vocab: llama_cpp.llama_vocab_p, n_vocab: int, *, cut_only: bool = False
) -> int:
    """Build a llama.cpp sampler chain for one request; the caller frees it.

    Args:
        cut_only: only the samplers up to top-k (logit bias, penalties, top-k): for backend
            sampling that cuts each row to its top-k in the graph and draws on the host.

    Returns:
        The chain pointer (``llama_sampler *``) as an int.

    Raises:
        InvalidRequestError: the grammar does not parse.
    """
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    try:
        add = llama_cpp.llama_sampler_chain_add
        if params.logit_bias:
            n = len(params.logit_bias)
            arr = (llama_cpp.llama_logit_bias * n)()
            for i, (tok, bias) in enumerate(params.logit_bias.items()):
                arr[i].token = int(tok)  # type: ignore[assignment]
                # -inf bans a token; llama.cpp adds the bias to the logit, so clamp to finite.
                arr[i].bias = max(float(bias), -1e30)
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, n, arr))
        if _has_penalties(params):
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    params.repeat_last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if cut_only:
            add(chain, llama_cpp.llama_sampler_init_top_k(min(params.top_k, n_vocab)))
            return chain
        gbnf = grammar_for(params)
        tool = params.tool_grammar
        if gbnf is not None and tool is not None and tool.lazy:
            patterns = [p.encode("utf-8") for p in tool.triggers]
            triggers = (ctypes.c_char_p * len(patterns))(*patterns)
            lazy = llama_cpp.llama_sampler_init_grammar_lazy_patterns
            g = lazy(vocab, gbnf.encode("utf-8"), b"root", triggers, len(patterns), None, 0)  # type: ignore[arg-type]
            if not g:
                raise InvalidRequestError("tool-call grammar does not parse", param="tools")
            add(chain, g)
        elif gbnf is not None:
            g = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
            if not g:
                raise InvalidRequestError("grammar does not parse (GBNF)", param="grammar")
            add(chain, g)
        if params.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                # (no cut past the vocabulary; the graph's top-k cannot take a larger k)
                add(chain, llama_cpp.llama_sampler_init_top_k(min(params.top_k, n_vocab)))
            if params.top_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    except BaseException:
        llama_cpp.llama_sampler_free(chain)
        raise
    return chain


def chain_key(params: SamplingParams, *, cut_only: bool = False) -> tuple:
    """What :func:`build_chain` builds a grammar-free chain from: equal keys, equal chains."""
    bias = tuple(sorted((int(t), float(b)) for t, b in params.logit_bias.items()))
    penalties = (
        params.repeat_penalty,
        params.repeat_last_n,
        params.presence_penalty,
        params.frequency_penalty,
    )
    if cut_only:
        return ("top-k", params.top_k, penalties, bias)
    return (
        params.temperature,
        params.top_k,
        params.top_p,
        params.min_p,
        params.repeat_penalty,
        params.repeat_last_n,
        params.presence_penalty,
        params.frequency_penalty,
        params.seed,
        bias,
    )


def free_chain(chain: int | None) -> None:
    """Free a chain made by :func:`build_chain` (None is ignored)."""
    if chain:
        llama_cpp.llama_sampler_free(chain)


def logprobs_of(
    logits_ptr: ctypes._Pointer,  # type: ignore[type-arg]
    n_vocab: int,
    token: int,
    top_n: int,
    piece: Callable[[int], str],
) -> tuple[float, tuple[TopLogprob, ...]]:
    """Log-probability of ``token`` and the ``top_n`` most likely tokens under the raw logits."""
    logits = np.ctypeslib.as_array(logits_ptr, shape=(n_vocab,)).astype(np.float64)
    m = logits.max()
    lse = m + math.log(np.exp(logits - m).sum())
    chosen = float(logits[token] - lse)
    if top_n <= 0:
        return chosen, ()
    idx = np.argpartition(-logits, top_n - 1)[:top_n]
    idx = idx[np.argsort(-logits[idx], kind="stable")]
    top = tuple(TopLogprob(int(t), piece(int(t)), float(logits[t] - lse)) for t in idx)
    return chosen, top
