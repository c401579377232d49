"""Where one decode step's time goes: the llama_decode call itself, the wait for the result,
and reading the logits + argmax. On a GPU, llama_decode returns once the work is queued, so
"wait" is the window in which the engine's pipelined steps make their events.

    python scripts/decode_timing.py MODEL.gguf [--steps 256] [--ctx N] [--threads N]
        [--engine [--pipeline auto|on|off] | --in-thread]

Without --engine: the raw loop (one llama_decode per token, argmax in numpy). With --engine:
one greedy stream through the engine, with its llama_decode and llama_get_logits calls timed.
Prints one JSON line of medians in microseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np

from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.engine._native import llama_cpp
from ggufworker.engine.batch import Batch
from ggufworker.engine.model import ContextOptions, Model

PROMPT = "The history of the printing press begins"


def raw(args: argparse.Namespace) -> dict[str, object]:
    model = Model(args.model)
    ctx = model.new_context(
        ContextOptions(n_ctx=args.ctx, n_parallel=args.parallel, n_threads=args.threads)
    )
    batch = Batch(512)
    prompt = model.tokenize(PROMPT)
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
    llama_cpp.llama_free(ctx)
    model.close()
    rows = rows[8:]
    return {
        "mode": "raw",
        "backend": model.backend,
        "decode_call_us": _med([r[0] for r in rows]),
        "wait_us": _med([r[1] for r in rows]),
        "logits_argmax_us": _med([r[2] for r in rows]),
        "step_us": _med([sum(r) for r in rows]),
    }


def engine(args: argparse.Namespace) -> dict[str, object]:
    calls: list[float] = []
    waits: list[float] = []
    starts: list[float] = []
    decode, get_logits = Batch.decode, llama_cpp.llama_get_logits

    def timed_decode(self: Batch, ctx: object) -> int:
        t0 = time.perf_counter()
        rc = decode(self, ctx)  # type: ignore[arg-type]
        starts.append(t0)
        calls.append(time.perf_counter() - t0)
        return rc

    def timed_logits(ctx: object) -> object:
        t0 = time.perf_counter()
        out = get_logits(ctx)
        waits.append(time.perf_counter() - t0)
        return out

    Batch.decode = timed_decode  # type: ignore[method-assign]
    llama_cpp.llama_get_logits = timed_logits
    eng = Engine.load(
        args.model,
        n_ctx=args.ctx,
        n_parallel=args.parallel,
        n_threads=args.threads,
        pipeline={"auto": None, "on": True, "off": False}[args.pipeline],
    )
    try:
        params = SamplingParams(temperature=0, max_tokens=args.steps, ignore_eos=True)
        eng.generate(GenerationRequest(PROMPT, params))
        pipelined = eng.pipelined
    finally:
        eng.close()
        Batch.decode = decode  # type: ignore[method-assign]
        llama_cpp.llama_get_logits = get_logits
    steps = [b - a for a, b in zip(starts[8:], starts[9:], strict=False)]
    return {
        "mode": "engine",
        "pipeline": pipelined,
        "decode_call_us": _med(calls[8:]),
        "logits_wait_us": _med(waits[8:]),
        "step_us": _med(steps),
    }


def _med(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1e6, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--engine", action="store_true")
    ap.add_argument("--pipeline", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--in-thread", action="store_true", help="run the raw loop off the main thread")
    args = ap.parse_args()
    if args.engine:
        out = engine(args)
    elif args.in_thread:
        box: list[dict[str, object]] = []
        t = threading.Thread(target=lambda: box.append(raw(args)))
        t.start()
        t.join()
        out = box[0]
        out["mode"] = "raw-in-thread"
    else:
        out = raw(args)
    out.update(ctx=args.ctx, parallel=args.parallel, threads=args.threads)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
