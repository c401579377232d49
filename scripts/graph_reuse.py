"""How often llama.cpp reuses the engine's decode graph (its ``n_reused`` perf counter).

    python3 scripts/graph_reuse.py MODEL.gguf [--tokens 128] [--streams 1,8]
        [--temperature 0 [0.8 ...]] [--backend-sampling auto|on|off]

The engine creates its context with ``no_perf`` set; this script turns the counters on for its
own engine (the context parameters are patched on their way into llama.cpp) and, per case, resets
them, runs N concurrent streams of T tokens, and reads ``n_eval``, ``n_p_eval`` and ``n_reused``
(graphs reused instead of rebuilt) beside the number of ``llama_decode`` calls. One JSON line per
case. A sampled case runs its streams three times with a pause longer than the engine's chain
idle time between, as a bench client does, and reports each run's time to first token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.engine._native import llama_cpp as native
from ggufworker.engine.batch import Batch

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--temperature", type=float, nargs="+", default=[0.0])
    ap.add_argument("--backend-sampling", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--ctx", type=int, default=8192)
    args = ap.parse_args()
    streams = [int(x) for x in args.streams.split(",")]

    ctxs: list[object] = []
    init = native.llama_init_from_model

    def init_with_perf(model: object, params: object) -> object:
        params.no_perf = False  # type: ignore[attr-defined]
        ctx = init(model, params)
        ctxs.append(ctx)
        return ctx

    native.llama_init_from_model = init_with_perf
    calls = [0]
    decode = Batch.decode

    def counted(self: Batch, ctx: object) -> int:
        calls[0] += 1
        return decode(self, ctx)  # type: ignore[arg-type]

    Batch.decode = counted  # type: ignore[method-assign]
    eng = Engine.load(
        args.model, n_ctx=args.ctx, n_parallel=max(streams), backend_sampling=args.backend_sampling
    )
    ctx = ctxs[-1]
    try:
        eng.generate(GenerationRequest(PROMPT, SamplingParams(temperature=0, max_tokens=8)))
        for temp in args.temperature:
            for n in streams:
                rounds = 3 if temp > 0 else 1
                native.llama_perf_context_reset(ctx)
                calls[0] = 0
                ttfts: list[float] = []
                t0 = time.perf_counter()
                for r in range(rounds):
                    if r:
                        time.sleep(0.5)  # past the chain idle time: as a client's next request

                    def one(i: int, r: int = r, temp: float = temp, ttfts: list = ttfts) -> None:
                        params = SamplingParams(
                            temperature=temp, max_tokens=args.tokens, ignore_eos=True,
                            seed=1000 * r + i,
                        )  # fmt: skip
                        t = time.perf_counter()
                        for k, _ev in enumerate(eng.submit(GenerationRequest(PROMPT, params))):
                            if k == 0:
                                ttfts.append(time.perf_counter() - t)

                    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                wall = time.perf_counter() - t0 - 0.5 * (rounds - 1)
                perf = native.llama_perf_context(ctx)
                print(json.dumps({
                    "streams": n, "temperature": temp, "rounds": rounds, "tokens": args.tokens,
                    "backend_sampling": args.backend_sampling, "sampling": eng.sampling,
                    "decode_calls": calls[0], "n_eval": perf.n_eval, "n_p_eval": perf.n_p_eval,
                    "n_reused": perf.n_reused,
                    "reused_share": round(perf.n_reused / max(1, calls[0]), 3),
                    "tok_s": round(rounds * n * args.tokens / wall, 1),
                    "ttft_ms": [round(x * 1e3, 1) for x in ttfts[:6]],
                    "median_ttft_ms": round(statistics.median(ttfts) * 1e3, 1),
                }), flush=True)  # fmt: skip
    finally:
        eng.close()
        Batch.decode = decode  # type: ignore[method-assign]
        native.llama_init_from_model = init


if __name__ == "__main__":
    main()
