"""`ggufworker bench --rpc-workers N`: what splitting a model over llama.cpp RPC workers costs.

One run, one model, three engines one after the other (never two at once): the engine in this
process, the same engine in a child process (as a split model's engine runs, so the pipe is
counted apart), and the engine in a child process with the offloaded layers split over N
`ggufworker rpc-worker` processes on 127.0.0.1 (started here, stopped at the end). For each and
each client count (``--rpc-clients``, default 1 and 8): aggregate tok/s of that many concurrent
greedy streams of ``--tokens`` tokens each (end of sequence ignored), the median of ``--runs``
repetitions. Loopback has no network cost, so the split's overhead here is the RPC protocol
itself (a round trip per graph and tensor copy); between hosts add the link's latency.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

TOPICS = ("rivers", "caches", "lanterns", "kernels", "comets", "violins", "engines", "apples")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The RPC benchmark's options (``--model``, ``--tokens``, ``--runs``, ``--threads`` and
    ``--ctx-size`` are shared with the engine benchmark)."""
    g = parser.add_argument_group("RPC split (--rpc-workers)")
    g.add_argument(
        "--rpc-workers",
        type=int,
        default=0,
        metavar="N",
        help="benchmark --model split over N loopback RPC workers against it local",
    )
    g.add_argument("--rpc-clients", default="1,8", help="concurrent stream counts")
    g.add_argument(
        "--rpc-gpu-layers",
        type=int,
        default=None,
        metavar="N",
        help="layers on the workers (default: all; the rest stay on this host's CPU)",
    )


@contextlib.contextmanager
def workers(n: int, *, threads: int | None) -> Iterator[list[str]]:
    """``n`` `ggufworker rpc-worker` processes on free loopback ports; their endpoints."""
    from ggufworker.bench.servers import free_port
    from ggufworker.server.core.rpc_split import probe

    procs: list[subprocess.Popen[bytes]] = []
    endpoints: list[str] = []
    try:
        for _ in range(n):
            port = free_port()
            cmd = [sys.executable, "-m", "ggufworker", "rpc-worker", "--port", str(port)]
            if threads:
                cmd += ["--threads", str(threads)]
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            endpoints.append(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for proc, endpoint in zip(procs, endpoints, strict=True):
            while not probe(endpoint, timeout=0.5):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"RPC worker {endpoint} did not start")
                time.sleep(0.1)
        yield endpoints
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _phase(engine: Any, clients: int, tokens: int) -> float:
    """Aggregate tok/s of ``clients`` concurrent greedy streams of ``tokens`` tokens."""
    from ggufworker.engine.types import GenerationRequest, SamplingParams

    greedy = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    stamp = time.monotonic_ns()

    def client(i: int) -> None:
        # a prompt of its own each time: no stream starts from another's cached prefix
        prompt = f"Note {stamp}-{i}: write a few lines about {TOPICS[i % len(TOPICS)]}."
        start.wait()
        for event in engine.submit(GenerationRequest(prompt, greedy)):
            counts[i] += event.token_id is not None

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def _measure(engine: Any, clients: list[int], tokens: int, runs: int) -> dict[str, float]:
    _phase(engine, 1, min(8, tokens))  # warm-up
    out = {}
    for n in clients:
        out[str(n)] = statistics.median(_phase(engine, n, tokens) for _ in range(runs))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by the parsed ``args``; returns the result dict."""
    from ggufworker.engine import Engine
    from ggufworker.engine.child import ChildEngine
    from ggufworker.registry import pull

    path = pull(args.model, home=getattr(args, "home", None), progress=not args.json)
    clients = [int(c) for c in args.rpc_clients.split(",") if c.strip()]
    options: dict[str, Any] = dict(
        name=path.stem,
        n_ctx=args.ctx_size,
        n_parallel=max(clients),
        n_threads=args.threads,
        n_batch=max(512, max(clients)),
    )
    results: dict[str, dict[str, float]] = {}
    local = Engine.load(path, **options)
    try:
        results["in-process"] = _measure(local, clients, args.tokens, args.runs)
    finally:
        local.close()
    child = ChildEngine(path, options)
    try:
        results["child process"] = _measure(child, clients, args.tokens, args.runs)
    finally:
        child.close()
    with workers(args.rpc_workers, threads=args.threads) as endpoints:
        split = ChildEngine(
            path,
            {**options, "rpc_servers": tuple(endpoints), "n_gpu_layers": args.rpc_gpu_layers},
        )
        try:
            results[f"split over {len(endpoints)} RPC workers"] = _measure(
                split, clients, args.tokens, args.runs
            )
        finally:
            split.close()
    base = results["child process"]
    split_row = results[f"split over {args.rpc_workers} RPC workers"]
    return {
        "model": str(path),
        "workers": args.rpc_workers,
        "gpu_layers": args.rpc_gpu_layers,
        "tokens": args.tokens,
        "runs": args.runs,
        "threads": args.threads or os.cpu_count(),
        "aggregate_tps": results,
        "split_over_local": {n: split_row[n] / base[n] if base[n] else None for n in base},
    }


def format_report(r: dict[str, Any]) -> str:
    """The result as a short table."""
    clients = list(next(iter(r["aggregate_tps"].values())))
    lines = [
        f"model {r['model']}  RPC workers {r['workers']} (loopback)  tokens/stream "
        f"{r['tokens']}  runs {r['runs']} (medians)  threads {r['threads']}",
        "",
        f"{'aggregate tok/s':<32}" + "".join(f"{c + ' client(s)':>14}" for c in clients),
    ]
    for name, row in r["aggregate_tps"].items():
        lines.append(f"{name:<32}" + "".join(f"{row[c]:>14.1f}" for c in clients))
    ratio = r["split_over_local"]
    lines += ["", f"{'split / local (child process)':<32}"
              + "".join(f"{ratio[c]:>14.3f}" for c in clients)]  # fmt: skip
    return "\n".join(lines)
