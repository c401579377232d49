"""HTTP-level benchmark: our server against llama.cpp's raw loop, the engine alone and
llama-cpp-python's server.

In one run, on one model, one after the other (never two at once, so they don't share the
CPU): the raw low-level loop (one ``llama_decode`` per step, as ``ggufworker bench`` runs it),
the engine in-process, `ggufworker serve` as a subprocess, and
`python -m llama_cpp.server --interrupt_requests False` as a subprocess. For each it measures

- single-stream decode tok/s: (tokens - 1) / (last token time - first token time);
- aggregate tok/s with N streaming clients at once: all tokens / wall time;
- median time to first token (TTFT) of those clients;
- streams completed (every token arrived, the stream ended properly).

Every request is greedy with end-of-sequence tokens banned through ``logit_bias``, so every
stream generates exactly ``max_tokens`` tokens on every target. Results are medians of
``--runs`` repetitions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ggufworker.bench.prompts import PROMPTS
from ggufworker.bench.servers import bench_model_path, free_port, llama_server_cmd, server
from ggufworker.bench.targets import HttpTarget, OllamaTarget, Stream
from ggufworker.paths import DEFAULT_MODEL

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ggufworker bench --http``."""
    g = parser.add_argument_group("HTTP benchmark")
    g.add_argument("--model", default=DEFAULT_MODEL, help="registry name or GGUF path")
    g.add_argument("--clients", type=int, default=8, help="concurrent streaming clients")
    g.add_argument("--max-tokens", type=int, default=128, help="tokens generated per request")
    g.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("--ctx-size", type=int, default=4096, help="context per target")
    g.add_argument("--parallel", type=int, default=None, help="our slots (default: --clients)")
    g.add_argument(
        "--targets",
        default="raw,engine,ggufworker,llama-cpp-python",
        help="comma-separated subset of raw, engine, ggufworker, llama-cpp-python, "
        "ggufworker-ollama (our server through the Ollama API, /api/generate), "
        "llama-server (llama.cpp's own server; see --llama-server)",
    )
    g.add_argument(
        "--llama-server",
        default=os.environ.get("GGUFWORKER_LLAMA_SERVER"),
        help="llama.cpp's llama-server binary for the llama-server target (build it from the "
        "pinned sdist with: python3 scripts/build_llama_server.py)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature of every request (0: greedy); with > 0 the requests also "
        "send --top-p, top_k 40 and min_p 0.05, the same to every target",
    )
    g.add_argument("--top-p", type=float, default=0.95, help="top_p when --temperature > 0")
    modes = ("auto", "on", "off")
    g.add_argument("--backend-sampling", choices=modes, default="auto", help="our server's flag")
    g.add_argument(
        "--llama-server-args",
        default="",
        help="extra llama-server flags, one string (e.g. '-bs' for its backend sampling)",
    )
    g.add_argument(
        "--client-procs",
        type=int,
        default=None,
        help="client processes that share the streams of the HTTP targets (default: one per "
        "16 clients, at most the CPU count), so the client is not the bottleneck",
    )
    g.add_argument("--home", type=Path, default=None, help="model cache root")
    g.add_argument("--startup-timeout", type=float, default=180.0, help="seconds per server")


# --- measurements ------------------------------------------------------------------------------


def _summary(single: list[Stream], batches: list[tuple[float, list[Stream]]], want: int) -> dict:
    """Medians over runs of the single-stream and N-client measurements."""
    decode_runs = [s.decode_tps for s in single]
    decode = [x for x in decode_runs if x]
    aggregate, ttfts, completed = [], [], []
    for wall, streams in batches:
        tokens = sum(s.tokens for s in streams)
        aggregate.append(tokens / wall if wall > 0 else 0.0)
        ttfts.append(statistics.median([s.ttft for s in streams if s.ttft is not None] or [0.0]))
        completed.append(sum(1 for s in streams if s.completed and s.tokens == want))
    med = statistics.median
    return {
        "single_decode_tps": round(med(decode), 2) if decode else None,
        "single_decode_tps_runs": [round(x, 2) if x else None for x in decode_runs],
        "aggregate_tps": round(med(aggregate), 2) if aggregate else None,
        "aggregate_tps_runs": [round(x, 2) for x in aggregate],
        "median_ttft_s": round(med(ttfts), 3) if ttfts else None,
        "streams_completed": min(completed) if completed else 0,
        "streams_per_run": len(batches[0][1]) if batches else 0,
    }


class EngineTarget:
    """The engine in this process: the ceiling the server is compared with."""

    name = "engine"

    def __init__(self, path: Path, args: argparse.Namespace, clients: int) -> None:
        from ggufworker.engine import Engine, SamplingParams

        self.engine = Engine.load(
            path,
            n_ctx=_ctx(args, clients),
            n_parallel=args.parallel or clients,
            n_threads=args.threads,
        )
        self.eos = list(self.engine.info.eos_token_ids)
        self._params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=0.0,
            repeat_penalty=1.0,
            logit_bias={t: -100.0 for t in self.eos},
        )

    async def _one(self, prompt: str, max_tokens: int) -> Stream:
        from dataclasses import replace

        from ggufworker.engine import GenerationRequest

        params = replace(self._params, max_tokens=max_tokens)
        sent = time.perf_counter()
        times: list[float] = []
        completed = False
        async for ev in self.engine.submit(GenerationRequest(prompt, params)):
            if ev.token_id is not None:
                times.append(time.perf_counter())
            completed = ev.finish_reason is not None
        return Stream(sent, times, completed)

    def measure(self, n: int, max_tokens: int) -> tuple[float, list[Stream]]:
        async def many() -> tuple[float, list[Stream]]:
            start = time.perf_counter()
            streams = await asyncio.gather(
                *[self._one(PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(n)]
            )
            return time.perf_counter() - start, list(streams)

        return asyncio.run(many())

    def close(self) -> None:
        self.engine.close()


class RawTarget:
    """llama.cpp's raw loop in this process: the floor of per-token overhead."""

    name = "raw"

    def __init__(self, path: Path, args: argparse.Namespace, clients: int, engine: Any) -> None:
        from ggufworker.engine.model import ContextOptions, Model

        self.model = Model(path)
        self.opts = ContextOptions(
            n_ctx=_ctx(args, clients), n_parallel=clients, n_threads=args.threads
        )
        self.prompts = [engine.tokenize(PROMPTS[i % len(PROMPTS)]) for i in range(clients)]
        # On the engine's thread: a second computing thread would slow both (docs/ENGINE.md).
        self.on_thread = engine.run_on_scheduler

    def measure(self, n: int, max_tokens: int) -> tuple[float, list[Stream]]:
        """Like the other targets; token times are spread evenly over the measured decode."""
        from ggufworker.engine.reference import raw_greedy

        prompts = self.prompts[:n]
        run = self.on_thread(lambda: raw_greedy(self.model, prompts, max_tokens, opts=self.opts))
        t0 = time.perf_counter()
        first = t0 + run.prompt_s
        step = run.decode_s / max(1, max_tokens - 1)
        times = [first + i * step for i in range(max_tokens)]
        streams = [Stream(t0, times, True) for _ in range(n)]
        return run.prompt_s + run.decode_s, streams

    def close(self) -> None:
        self.model.close()


# --- the run ---------------------------------------------------------------------------------
def _threads(args: argparse.Namespace) -> int:
    return args.threads or os.cpu_count() or 1


def _ctx(args: argparse.Namespace, clients: int) -> int:
    return max(args.ctx_size, clients * (args.max_tokens + 64))


def _paired_ratio(a: list[float | None], b: list[float | None]) -> float | None:
    """Median over runs of a[i] / b[i] (both measured in run i)."""
    ratios = [x / y for x, y in zip(a, b, strict=True) if x and y]
    return round(statistics.median(ratios), 3) if ratios else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark and return its results (numbers, settings, ratios).

    The servers are started together and idle while another target is measured; each run
    measures every target in turn (single stream, then N clients), so a noisy neighbour hits
    all targets alike, and ratios are taken within a run before the median.

    Raises:
        ModelNotFoundError / DownloadError: the model cannot be resolved.
    """
    path = bench_model_path(args)
    clients = args.clients
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    n_threads = _threads(args)
    threads = str(n_threads)
    out: dict[str, Any] = {
        "model": args.model,
        "path": str(path),
        "clients": clients,
        "max_tokens": args.max_tokens,
        "runs": args.runs,
        "threads": n_threads,
        "cpu_count": os.cpu_count(),
    }
    servers: list[tuple[str, list[str], int, str]] = []
    if "ggufworker" in wanted or "ggufworker-ollama" in wanted:
        port = free_port()
        cmd = [
            sys.executable, "-m", "ggufworker", "serve",
            "--model", str(path),
            "--port", str(port),
            "--parallel", str(args.parallel or clients),
            "--ctx-size", str(_ctx(args, clients)),
            "--max-queue", str(4 * clients),
            "--keep-alive", "-1",
            "--log-level", "warning",
        ]  # fmt: skip
        # Without --threads our server runs its own thread policy (all available CPUs, tuned
        # to the load: engine/threads.py); the peers get the same count, fixed.
        if args.threads:
            cmd += ["--threads", threads]
        if args.backend_sampling != "auto":
            cmd += ["--backend-sampling", args.backend_sampling]
        servers.append(("ggufworker", cmd, port, "/health"))
    if "llama-cpp-python" in wanted:
        port = free_port()
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(path),
            "--port", str(port),
            "--interrupt_requests", "False",
            "--n_ctx", str(args.ctx_size),
            "--n_threads", threads,
            "--n_threads_batch", threads,
            # Its default keeps every layer on the CPU; offload all, as our engine does.
            "--n_gpu_layers", "-1",
        ]  # fmt: skip
        servers.append(("llama_cpp_python", cmd, port, "/v1/models"))
    if "llama-server" in wanted:
        port = free_port()
        parallel = args.parallel or clients
        cmd = llama_server_cmd(
            args, "-m", str(path), "--port", str(port),
            "-t", threads, "-tb", threads,
            "-np", str(parallel), "-kvu", "-c", str(_ctx(args, clients)),
            "-ngl", "999", "--no-webui", "--log-disable",
        )  # fmt: skip
        servers.append(("llama_server", cmd, port, "/health"))
    procs = args.client_procs or max(1, min(os.cpu_count() or 1, clients // 16))
    out["client_procs"] = procs
    sampling: dict[str, float] = {"temperature": args.temperature}
    if args.temperature > 0:
        sampling.update(top_p=args.top_p, top_k=40, min_p=0.05)
    out["sampling"] = sampling
    out["backend_sampling"] = args.backend_sampling
    out["llama_server_args"] = args.llama_server_args
    with contextlib.ExitStack() as stack:
        bases = {name: stack.enter_context(server(cmd, port, args.startup_timeout, ready))
                 for name, cmd, port, ready in servers}  # fmt: skip
        # The engine is loaded even when not measured: it names the EOS tokens to ban.
        engine = EngineTarget(path, args, clients)
        stack.callback(engine.close)
        targets: list[Any] = []
        if "raw" in wanted:
            raw = RawTarget(path, args, clients, engine.engine)
            stack.callback(raw.close)
            targets.append(raw)
        targets += [engine] if "engine" in wanted else []
        targets += [
            HttpTarget(name, base, engine.eos, sampling, procs)
            for name, base in bases.items()
            if name != "ggufworker" or "ggufworker" in wanted
        ]
        if "ggufworker-ollama" in wanted:
            targets.append(OllamaTarget("ggufworker_ollama", bases["ggufworker"], path.stem))
        single: dict[str, list[Stream]] = {t.name: [] for t in targets}
        batches: dict[str, list[tuple[float, list[Stream]]]] = {t.name: [] for t in targets}
        for t in targets:
            t.measure(1, 8)  # warm-up
        for r in range(args.runs):
            logger.info("bench: run %d/%d", r + 1, args.runs)
            for t in targets:
                single[t.name].append(t.measure(1, args.max_tokens)[1][0])
            for t in targets:
                batches[t.name].append(t.measure(clients, args.max_tokens))
    for t in targets:
        out[t.name] = _summary(single[t.name], batches[t.name], args.max_tokens)
    # Our server against each peer measured in the same runs.
    ours = out.get("ggufworker")
    peers = (
        ("engine", ("single_decode", "aggregate")),
        ("raw", ("single_decode", "aggregate")),
        ("llama_cpp_python", ("aggregate",)),
        ("llama_server", ("single_decode", "aggregate")),
        ("ggufworker_ollama", ("aggregate",)),
    )
    for peer, kinds in peers:
        if ours and peer in out:
            for kind in kinds:
                out[f"{kind}_ratio_vs_{peer}"] = _paired_ratio(
                    ours[f"{kind}_tps_runs"], out[peer][f"{kind}_tps_runs"]
                )
    return out


def format_report(result: dict[str, Any]) -> str:
    """A small table of :func:`run`'s result."""
    rows = [
        f"model {result['model']}  clients {result['clients']}  max_tokens {result['max_tokens']}"
        f"  runs {result['runs']}  threads {result['threads']}  sampling {result.get('sampling')}",
        f"{'target':<18}{'1-stream tok/s':>15}{'N-client tok/s':>16}{'TTFT s':>9}{'complete':>10}",
    ]
    for key in ("raw", "engine", "ggufworker", "ggufworker_ollama", "llama_cpp_python",
                "llama_server"):  # fmt: skip
        r = result.get(key)
        if r:
            rows.append(
                f"{key:<18}{r['single_decode_tps'] or 0:>15.1f}{r['aggregate_tps'] or 0:>16.1f}"
                f"{r['median_ttft_s'] or 0:>9.2f}{r['streams_completed']:>7}/{r['streams_per_run']}"
            )
    for key in (
        "single_decode_ratio_vs_raw",
        "aggregate_ratio_vs_raw",
        "single_decode_ratio_vs_engine",
        "aggregate_ratio_vs_engine",
        "aggregate_ratio_vs_llama_cpp_python",
        "aggregate_ratio_vs_ggufworker_ollama",
        "single_decode_ratio_vs_llama_server",
        "aggregate_ratio_vs_llama_server",
    ):
        if key in result:
            rows.append(f"{key}: {result[key]}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m ggufworker.bench.http``: run and print the table and JSON."""
    parser = argparse.ArgumentParser(prog="python -m ggufworker.bench.http")
    add_arguments(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = run(args)
    print(format_report(result))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
