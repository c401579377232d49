"""`ggufworker bench --embeddings` / `--rerank`: inputs per second of an embedding or rerank
model through each server, against llama-server in the same run.

Two loads, each ``--runs`` times (medians reported): one client sending requests of
``--embed-batch`` inputs (a RAG indexer), and ``--embed-clients`` clients sending one input per
request at once (a RAG query path). For rerank an input is a (query, document) pair: a request
carries one query and ``--embed-batch`` documents, or one document. Peak resident memory of each
server process is reported with its throughput.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ggufworker.bench.servers import (
    bench_model_path,
    llama_server_cmd,
    peak_rss_kib,
    started_target,
)

_WORDS = (
    "river model index query vector cache token server batch document answer search "
    "retrieval ranking memory kernel thread layer weight matrix context prompt stream"
).split()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the embedding/rerank benchmark (``--model``, ``--runs``, ``--threads``,
    ``--llama-server`` and ``--startup-timeout`` are shared with the other modes)."""
    g = parser.add_argument_group("embeddings / rerank (--embeddings, --rerank)")
    g.add_argument("--embeddings", action="store_true", help="benchmark /v1/embeddings")
    g.add_argument("--rerank", action="store_true", help="benchmark /v1/rerank")
    g.add_argument(
        "--embed-targets",
        default="ggufworker,llama-server",
        help="comma-separated: ggufworker, llama-server (needs --llama-server)",
    )
    g.add_argument("--embed-batch", type=int, default=64, help="inputs per batched request")
    g.add_argument("--embed-clients", type=int, default=16, help="concurrent one-input clients")
    g.add_argument("--embed-requests", type=int, default=8, help="requests per client per run")
    g.add_argument("--embed-words", type=int, default=24, help="words per input text")


def texts(n: int, words: int, seed: int) -> list[str]:
    """``n`` different texts of ``words`` words (deterministic)."""
    out = []
    for i in range(n):
        k = seed * 7919 + i * 104729
        out.append(" ".join(_WORDS[(k + j * j) % len(_WORDS)] for j in range(words)) + f" {i}.")
    return out


def _request(client: httpx.Client, base: str, model: str, rerank: bool, items: list[str]) -> None:
    if rerank:
        body: dict[str, Any] = {"model": model, "query": "which text is about retrieval?"}
        body["documents"] = items
        r = client.post(f"{base}/v1/rerank", json=body)
    else:
        r = client.post(f"{base}/v1/embeddings", json={"model": model, "input": items})
    r.raise_for_status()


def _batched(base: str, model: str, args: argparse.Namespace, seed: int) -> float:
    """Inputs per second: one client, requests of --embed-batch inputs."""
    n, words = args.embed_batch, args.embed_words
    batches = [texts(n, words, seed + i) for i in range(args.embed_requests)]
    with httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        for items in batches:
            _request(client, base, model, args.rerank, items)
        elapsed = time.perf_counter() - started
    return args.embed_batch * args.embed_requests / elapsed


def _concurrent(base: str, model: str, args: argparse.Namespace, seed: int) -> float:
    """Inputs per second: --embed-clients clients at once, one input per request."""
    n = args.embed_clients

    def client_run(c: int) -> None:
        items = texts(args.embed_requests, args.embed_words, seed * 1000 + c)
        with httpx.Client(timeout=600) as client:
            for item in items:
                _request(client, base, model, args.rerank, [item])

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        started = time.perf_counter()
        list(pool.map(client_run, range(n)))
        elapsed = time.perf_counter() - started
    return n * args.embed_requests / elapsed


def _commands(args: argparse.Namespace, path: Path, threads: int) -> dict[str, list[str]]:
    wanted = [t.strip() for t in args.embed_targets.split(",") if t.strip()]
    n = args.embed_clients
    cmds: dict[str, list[str]] = {}
    if "ggufworker" in wanted:
        cmds["ggufworker"] = [
            sys.executable, "-m", "ggufworker", "serve", "--embedding-model", str(path),
            "--embedding-parallel", str(n), "--threads", str(threads),
            "--keep-alive", "-1", "--log-level", "warning",
        ]  # fmt: skip
    if "llama-server" in wanted:
        cmds["llama_server"] = llama_server_cmd(
            args, "-m", str(path), "-t", str(threads), "-tb", str(threads),
            "-np", str(n), "-c", str(512 * n), "-b", "2048", "-ub", "2048",
            "--rerank" if args.rerank else "--embedding", "--no-webui", "--log-disable",
        )  # fmt: skip
    return cmds


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both loads against each target in turn; medians, peak memory and the ratios.

    Raises:
        ModelNotFoundError / DownloadError: the model cannot be resolved.
    """
    path = bench_model_path(args)
    threads = args.threads or os.cpu_count() or 1
    out: dict[str, Any] = {
        "mode": "rerank" if args.rerank else "embeddings",
        "model": args.model,
        "runs": args.runs,
        "batch": args.embed_batch,
        "clients": args.embed_clients,
        "requests_per_client": args.embed_requests,
        "words_per_input": args.embed_words,
        "threads": threads,
        "load_before": os.getloadavg(),
        "targets": {},
    }
    for name, cmd in _commands(args, path, threads).items():
        with started_target(cmd, args.startup_timeout) as target:
            base, model = target.base, target.model
            with httpx.Client(timeout=600) as client:  # warm-up
                _request(client, base, model, args.rerank, texts(4, args.embed_words, 0))
            batched = [_batched(base, model, args, 10 + r) for r in range(args.runs)]
            conc = [_concurrent(base, model, args, 20 + r) for r in range(args.runs)]
            out["targets"][name] = {
                "batched_inputs_per_s": batched,
                "concurrent_inputs_per_s": conc,
                "batched_median": statistics.median(batched),
                "concurrent_median": statistics.median(conc),
                "peak_rss_kib": peak_rss_kib(target.pid),
            }
    out["load_after"] = os.getloadavg()
    ours, theirs = out["targets"].get("ggufworker"), out["targets"].get("llama_server")
    if ours and theirs:
        out["ratio_vs_llama_server"] = {
            k: ours[f"{k}_median"] / theirs[f"{k}_median"] for k in ("batched", "concurrent")
        }
    return out


def format_report(r: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run`'s result."""
    lines = [
        f"{r['mode']}: model {r['model']}, {r['runs']} runs (medians), threads {r['threads']}",
        f"batched: 1 client x {r['requests_per_client']} requests of {r['batch']} inputs; "
        f"concurrent: {r['clients']} clients x {r['requests_per_client']} requests of 1 input",
        "",
        f"{'target':<14} {'batched in/s':>13} {'concurrent in/s':>16} {'peak RSS MiB':>13}",
    ]
    for name, t in r["targets"].items():
        rss = (t.get("peak_rss_kib") or 0) / 1024
        lines.append(
            f"{name:<14} {t['batched_median']:>13.1f} {t['concurrent_median']:>16.1f} {rss:>13.0f}"
        )
    if "ratio_vs_llama_server" in r:
        ratio = r["ratio_vs_llama_server"]
        lines.append(
            f"\nours / llama-server: batched {ratio['batched']:.2f}x, "
            f"concurrent {ratio['concurrent']:.2f}x"
        )
    return "\n".join(lines)
