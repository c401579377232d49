"""Engine-level benchmark: the engine against what llama.cpp does with no scheduler around it.

In one process, one after the other (never two at once, so they don't share the CPU):

- the raw reference loop (one ``llama_decode`` per step, greedy argmax in numpy), one sequence
  and ``max(streams)`` sequences in one batch;
- plain ``llama_cpp.Llama`` streaming one completion;
- the engine with 1, 2, 4, 8... concurrent streams (asyncio consumers, as the server has).

Every generation is greedy for exactly ``tokens`` tokens (end-of-generation ignored), so all
targets do the same work. Each figure is the median over ``runs`` repetitions, and the engine's
prefix cache is cleared before each measurement so no run is served from an earlier one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ggufworker.bench.prompts import PROMPTS
from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.engine.model import ContextOptions, Model
from ggufworker.engine.reference import llama_greedy, raw_greedy

logger = logging.getLogger(__name__)

# A ~500-token prompt for prompt-processing throughput.
LONG_PROMPT = " ".join(
    f"Item {i}: a line of plain text for the prompt benchmark." for i in range(40)
)


def _prompts(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" ({i})") for i in range(n)]


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


async def _streams(engine: Engine, prompts: list[str], tokens: int) -> dict[str, float]:
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)

    async def one(prompt: str) -> tuple[float, float, float, int]:
        handle = engine.submit(GenerationRequest(prompt, params))
        first = last = 0.0
        ttft = 0.0
        n = 0
        async for ev in handle:
            now = time.perf_counter()
            if ev.token_id is not None:
                n += 1
                if n == 1:
                    first = now
                last = now
            if ev.time_to_first_token is not None:
                ttft = ev.time_to_first_token
        return ttft, first, last, n

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - t0
    n_total = sum(r[3] for r in results)
    per_stream = [(r[3] - 1) / (r[2] - r[1]) for r in results if r[3] > 1 and r[2] > r[1]]
    return {
        "aggregate_tps": n_total / wall,
        "decode_tps_per_stream": _median(per_stream),
        "ttft_median_s": _median([r[0] for r in results]),
        "tokens": float(n_total),
    }


def _chat_turns(engine: Engine) -> tuple[str, list[dict[str, str]]]:
    """A first-turn prompt with ~1,000 tokens of history, and the messages to build turn two."""
    facts = " ".join(f"Fact {i}: the number {i} comes after {i - 1}." for i in range(1, 70))
    history = [
        {"role": "user", "content": "Remember these facts. " + facts},
        {"role": "assistant", "content": "I will remember them."},
        {"role": "user", "content": "What is fact 3?"},
    ]
    return engine.render_chat(history), history


def _ttft(engine: Engine, prompt: str, tokens: int) -> tuple[float, str]:
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    ttft = 0.0
    parts = []
    for ev in engine.submit(GenerationRequest(prompt, params, parse_special=True)):
        parts.append(ev.text)
        if ev.time_to_first_token is not None:
            ttft = ev.time_to_first_token
    return ttft, "".join(parts)


def bench_engine(
    path: str | os.PathLike[str],
    *,
    streams: Sequence[int] = (1, 2, 4, 8),
    tokens: int = 64,
    runs: int = 3,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    references: bool = True,
    kv_layout: str = "auto",
    pipeline: bool | None = None,
) -> dict[str, Any]:
    """Measure the engine and the references on one model; medians over ``runs``.

    Returns:
        A JSON-ready dict: ``raw`` (reference loop), ``llama_cpp`` (plain Llama), ``engine``
        (per stream count), ``prompt`` (prompt tok/s) and ``ratios`` (engine / raw).
    """
    path = Path(path)
    n_max = max(streams)
    # Room for every stream's prompt and tokens at once (no run may hit the context end).
    n_ctx = max(n_ctx, n_max * (tokens + 64) + 1024)
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    engine = Engine.load(
        path,
        n_ctx=n_ctx,
        n_parallel=n_max,
        n_threads=n_threads,
        kv_layout=kv_layout,  # type: ignore[arg-type]
        pipeline=pipeline,
    )
    model = Model(path) if references else None
    try:
        long_ids = engine.tokenize(LONG_PROMPT)
        one_ids = [engine.tokenize(PROMPTS[0])]
        many_ids = [engine.tokenize(p) for p in _prompts(n_max)]
        opts = ContextOptions(n_ctx=n_ctx, n_parallel=n_max, n_threads=n_threads)
        # References run on the engine's thread: llama.cpp's CPU threads belong to the thread
        # that computes, and two sets of them slow each other (docs/ENGINE.md).
        on = engine.run_on_scheduler
        for r in range(runs):
            logger.info("run %d/%d", r + 1, runs)
            if model is not None:
                one = on(partial(raw_greedy, model, one_ids, tokens, opts=opts))
                add("raw.single.decode_tps", one.n_decoded / one.decode_s)
                many = on(partial(raw_greedy, model, many_ids, tokens, opts=opts))
                add(f"raw.batched{n_max}.decode_tps", many.n_decoded / many.decode_s)
                add(
                    f"raw.batched{n_max}.aggregate_tps",
                    n_max * tokens / (many.prompt_s + many.decode_s),
                )
                pp = on(partial(raw_greedy, model, [long_ids], 1, opts=opts))
                add("raw.prompt_tps", pp.n_prompt / pp.prompt_s)
                ttft, rest, n = on(
                    partial(
                        llama_greedy,
                        path,
                        PROMPTS[0],
                        tokens,
                        n_ctx=n_ctx,
                        n_threads=n_threads,
                        ban=engine.info.eos_token_ids,
                    )
                )
                add("llama_cpp.ttft_s", ttft)
                if n > 1:
                    add("llama_cpp.decode_tps", (n - 1) / rest)
            engine.clear_cache()
            t0 = time.perf_counter()
            engine.generate(
                GenerationRequest(long_ids, SamplingParams(temperature=0, max_tokens=1))
            )
            add("engine.prompt_tps", len(long_ids) / (time.perf_counter() - t0))
            for n in streams:
                engine.clear_cache()
                res = asyncio.run(_streams(engine, _prompts(n), tokens))
                for k, v in res.items():
                    add(f"engine.{n}.{k}", v)
            # Second chat turn: warm (history in a slot's KV) vs the same prompt cold.
            engine.clear_cache()
            first, history = _chat_turns(engine)
            _, answer = _ttft(engine, first, 16)
            second = engine.render_chat(
                history
                + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Fact 5?"}]
            )
            warm, _ = _ttft(engine, second, 1)
            engine.clear_cache()
            cold, _ = _ttft(engine, second, 1)
            add("prefix.warm_ttft_s", warm)
            add("prefix.cold_ttft_s", cold)
    finally:
        engine.close()
        if model is not None:
            model.close()

    med = {k: _median(v) for k, v in samples.items()}
    out: dict[str, Any] = {
        "model": path.name,
        "tokens": tokens,
        "runs": runs,
        "threads": n_threads or os.cpu_count(),
        "backend": engine.info.backend,
        "pipeline": engine.pipelined,
        "kv_layout": engine.kv_layout,
        "engine": {
            str(n): {
                k: med[f"engine.{n}.{k}"]
                for k in ("aggregate_tps", "decode_tps_per_stream", "ttft_median_s")
            }
            for n in streams
        },
        "prompt": {"engine_tps": med["engine.prompt_tps"], "n_tokens": len(long_ids)},
        "second_turn": {
            "cold_ttft_s": med["prefix.cold_ttft_s"],
            "warm_ttft_s": med["prefix.warm_ttft_s"],
            "warm_vs_cold": med["prefix.warm_ttft_s"] / med["prefix.cold_ttft_s"],
        },
        "samples": samples,
    }
    if references:
        out["prompt"]["raw_tps"] = med["raw.prompt_tps"]
        out["raw"] = {
            "single_decode_tps": med["raw.single.decode_tps"],
            f"batched{n_max}_decode_tps": med[f"raw.batched{n_max}.decode_tps"],
            f"batched{n_max}_aggregate_tps": med[f"raw.batched{n_max}.aggregate_tps"],
        }
        out["llama_cpp"] = {
            "decode_tps": med.get("llama_cpp.decode_tps", float("nan")),
            "ttft_s": med["llama_cpp.ttft_s"],
        }
        e1 = out["engine"].get("1")

        # Each ratio is the median of the per-run ratios: a run's engine and reference figures
        # are taken seconds apart, so load from other processes affects both alike.
        def ratio(num: str, den: str) -> float:
            pairs = zip(samples.get(num, []), samples[den], strict=False)
            return _median([a / b for a, b in pairs if b > 0])

        out["ratios"] = {
            "single_decode_vs_raw": ratio("engine.1.decode_tps_per_stream", "raw.single.decode_tps")
            if e1
            else None,
            f"aggregate{n_max}_vs_raw_batched": ratio(
                f"engine.{n_max}.aggregate_tps", f"raw.batched{n_max}.aggregate_tps"
            ),
            "prompt_vs_raw": ratio("engine.prompt_tps", "raw.prompt_tps"),
        }
    return out
