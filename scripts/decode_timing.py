"""Where one decode step's time goes, for the raw loop: the llama_decode call itself, the wait
for the result, and reading the logits + argmax. On a GPU, llama_decode returns once the work is
queued, so "wait" is the window in which the engine's pipelined steps make their events.

    python scripts/decode_timing.py MODEL.gguf [--steps 256]

Prints one JSON line of medians in microseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.batch import Batch
from ggufworker.engine.model import ContextOptions, Model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=256)
    args = ap.parse_args()
    model = Model(args.model)
    ctx = model.new_context(ContextOptions(n_ctx=args.steps + 64, n_parallel=1))
    batch = Batch(64)
    prompt = model.tokenize("The history of the printing press begins")
    batch.add_span(prompt, 0, 0, True)
    assert batch.decode(ctx) == 0
    n_vocab = model.n_vocab
    tok = int(np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), (1, n_vocab))[0].argmax())
    rows: list[tuple[float, float, float]] = []
    pos = len(prompt)
    for _ in range(args.steps):
        batch.clear()
        batch.add(tok, pos, 0, True)
        pos += 1
        t0 = time.perf_counter()
        assert batch.decode(ctx) == 0
        t1 = time.perf_counter()
        llama_cpp.llama_synchronize(ctx)
        t2 = time.perf_counter()
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), (1, n_vocab))
        tok = int(logits[0].argmax())
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2))
    med = [statistics.median(r[i] for r in rows[8:]) * 1e6 for i in range(3)]
    step = statistics.median(sum(r) for r in rows[8:]) * 1e6
    print(
        json.dumps(
            {
                "backend": model.backend,
                "decode_call_us": round(med[0], 1),
                "wait_us": round(med[1], 1),
                "logits_argmax_us": round(med[2], 1),
                "step_us": round(step, 1),
            }
        )
    )
    llama_cpp.llama_free(ctx)
    model.close()


if __name__ == "__main__":
    main()
