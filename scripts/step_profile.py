"""Where a batched engine step's time goes, for greedy and sampled traffic.

    python scripts/step_profile.py MODEL.gguf [--streams 64] [--tokens 128]
        [--temperature 0.8] [--top-k 40] [--backend-sampling auto|on|off] [--sync]
        [--mode cut|top-k|chain]

Runs ``--streams`` requests at once through the engine and times the scheduler's parts in
each step in which every stream decodes one token: the llama_decode call, the wait for the
device (only with ``--sync``, which waits right after the decode and so turns pipelining off),
building the batch, the greedy argmax (the rest of the step), the batched host draw, the
backend-cut draw and the per-token bookkeeping. Prints one JSON line of medians per step in
microseconds, and tokens per second from the median step interval. ``--mode`` makes every
sampled request take one backend-sampling mode (where it qualifies: a top-k request in
``chain`` mode draws with llama.cpp's RNG), to compare them on one shape.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections import defaultdict
from typing import Any

from ggufworker.bench.prompts import PROMPTS
from ggufworker.engine import (
    Engine,
    GenerationRequest,
    SamplingParams,
    backend_sampling,
    scheduler,
)
from ggufworker.engine import engine as engine_module
from ggufworker.engine._native import llama_cpp
from ggufworker.engine.batch import Batch

#: (name, start, seconds) of every timed call, in order; steps are cut at the decode calls
EVENTS: list[tuple[str, float, float]] = []


def _timed(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            EVENTS.append((name, t0, time.perf_counter() - t0))

    return wrapper


def instrument(sync: bool) -> None:
    decode = Batch.decode

    def timed_decode(self: Batch, ctx: Any) -> int:
        t0 = time.perf_counter()
        rc = decode(self, ctx)
        t1 = time.perf_counter()
        EVENTS.append(("decode", t0, t1 - t0))
        EVENTS.append(("n_tokens", t0, float(self.n)))
        if sync:
            llama_cpp.llama_synchronize(ctx)
            EVENTS.append(("device_wait", t1, time.perf_counter() - t1))
        return rc

    Batch.decode = timed_decode  # type: ignore[method-assign]
    cls = scheduler.Scheduler
    for name in (
        "_step",
        "_build_batch",
        "_admit",
        "_detach_idle",
        "_emit_pending",
        "_flush",
        "_sample_cut",
        "_sample_batched",
        "_sample",
    ):
        setattr(cls, name, _timed(name.strip("_"), getattr(cls, name)))
    backend_sampling.draw_candidates = _timed("draw_candidates", backend_sampling.draw_candidates)
    scheduler.sample_rows = _timed("sample_rows", scheduler.sample_rows)
    llama_cpp.llama_get_logits = _timed("get_logits", llama_cpp.llama_get_logits)
    llama_cpp.llama_sampler_accept = _timed("sampler_accept", llama_cpp.llama_sampler_accept)
    backend_sampling.read_candidates = _timed("read_candidates", backend_sampling.read_candidates)


def per_step(n_streams: int) -> dict[str, float]:
    """Medians over the steps that decoded one token for each stream (µs)."""
    starts = [i for i, e in enumerate(EVENTS) if e[0] == "decode"]
    sums: dict[str, list[float]] = defaultdict(list)
    intervals: list[float] = []
    for a, b in zip(starts, starts[1:], strict=False):
        if EVENTS[a + 1][2] != n_streams:
            continue
        intervals.append(EVENTS[b][1] - EVENTS[a][1])
        step: dict[str, float] = defaultdict(float)
        # the step that holds this decode began before it: take the events up to the next decode
        for name, _, dt in EVENTS[a:b]:
            if name != "n_tokens":
                step[name] += dt
        for name, v in step.items():
            sums[name].append(v)
    n = len(intervals)
    out = {
        name: round(statistics.median(v + [0.0] * (n - len(v))) * 1e6, 1)
        for name, v in sums.items()
    }
    out["interval"] = round(statistics.median(intervals) * 1e6, 1)
    out["steps"] = n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--ctx", type=int, default=16384)
    ap.add_argument("--backend-sampling", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--sync", action="store_true", help="wait for the device after each decode")
    ap.add_argument("--mode", choices=("cut", "top-k", "chain"), default=None)
    args = ap.parse_args()
    instrument(args.sync)
    if args.mode:
        chosen = backend_sampling.request_mode

        def forced(params: SamplingParams, n_vocab: int) -> str:
            return args.mode if chosen(params, n_vocab) else ""

        engine_module.request_mode = forced  # type: ignore[attr-defined]
    engine = Engine.load(
        args.model,
        n_ctx=args.ctx,
        n_parallel=args.streams,
        backend_sampling=args.backend_sampling,
    )
    try:

        def params(seed: int) -> SamplingParams:
            return SamplingParams(
                temperature=args.temperature,
                top_p=0.95,
                top_k=args.top_k,
                min_p=0.05,
                seed=seed,
                max_tokens=args.tokens,
                ignore_eos=True,
            )

        engine.generate(GenerationRequest(PROMPTS[0], params(1)))  # warm-up
        EVENTS.clear()
        t0 = time.perf_counter()
        handles = [
            engine.submit(GenerationRequest(PROMPTS[i % len(PROMPTS)], params(100 + i)))
            for i in range(args.streams)
        ]
        events = [[ev for ev in h] for h in handles]
        n_tok = sum(sum(1 for ev in evs if ev.token_id is not None) for evs in events)
        n_text = sum(sum(1 for ev in evs if ev.text) for evs in events)
        wall = time.perf_counter() - t0
        out: dict[str, Any] = {
            "kv_layout": engine.kv_layout,
            "sampling": engine.sampling,
            "pipelined": engine.pipelined,
            "streams": args.streams,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "sync": args.sync,
            "mode": args.mode,
            "tokens": n_tok,
            "events_with_text": n_text,
            "wall_tps": round(n_tok / wall, 1),
        }
    finally:
        engine.close()
    step = per_step(args.streams)
    out["step_tps"] = round(args.streams / (step["interval"] / 1e6), 1)
    out["us"] = step
    print(json.dumps(out))


if __name__ == "__main__":
    main()
