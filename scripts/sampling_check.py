"""Backend sampling against host sampling on one GGUF: same seeds, same tokens?

    python3 scripts/sampling_check.py MODEL.gguf [--requests 16] [--tokens 64]

Runs the same seeded sampled requests (temperature 0.8, top-p 0.95, top-k 40, min-p 0.05)
through an engine with backend sampling on (the graph cuts each row to its top-k, the host
draws) and through one sampling on the host (its own top-k of the copied logits, the same
draw), and prints one JSON line: how many requests gave identical tokens, and the first
position where the others part (a near-tie between two candidates can order differently).
"""

from __future__ import annotations

import argparse
import json
import time

from ggufworker.bench.prompts import PROMPTS
from ggufworker.engine import Engine, GenerationRequest, SamplingParams


def _run(path: str, mode: str, n: int, tokens: int) -> tuple[list[list[int]], float]:
    engine = Engine.load(path, n_ctx=16384, n_parallel=n, backend_sampling=mode)  # type: ignore[arg-type]
    try:
        t0 = time.perf_counter()
        handles = [
            engine.submit(
                GenerationRequest(
                    PROMPTS[i % len(PROMPTS)],
                    SamplingParams(
                        temperature=0.8,
                        top_p=0.95,
                        top_k=40,
                        min_p=0.05,
                        seed=500 + i,
                        max_tokens=tokens,
                        ignore_eos=True,
                    ),
                )
            )
            for i in range(n)
        ]
        out = [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]
        return out, time.perf_counter() - t0
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    backend, t_backend = _run(args.model, "on", args.requests, args.tokens)
    host, t_host = _run(args.model, "off", args.requests, args.tokens)
    parts = [
        next((j for j, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), None)
        for x, y in zip(backend, host, strict=True)
    ]
    print(
        json.dumps(
            {
                "requests": args.requests,
                "tokens": args.tokens,
                "identical": sum(p is None for p in parts),
                "first_difference": [p for p in parts if p is not None],
                "seconds_backend": round(t_backend, 2),
                "seconds_host": round(t_host, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
