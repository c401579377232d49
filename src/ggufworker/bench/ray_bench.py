"""`ggufworker bench --ray`: what the Ray Serve path costs per request, against the server direct.

One run, one model, one machine: ``ggufworker serve`` (direct) and the same engine settings
deployed by :mod:`ggufworker.deploy` on a local one-node Ray cluster with one replica (HTTP in
through Ray Serve's proxy, the ingress replica, then the engine replica). Both are up for the
whole run and measured in alternating rounds (``--runs``), so drift hits both alike:

- latency: ``--ray-requests`` sequential non-streamed completions of ``--ray-short`` tokens
  (greedy, end of sequence ignored); the Ray path's overhead per request is the difference of
  the medians;
- time to first token of as many streamed requests;
- aggregate tok/s of ``--ray-clients`` concurrent streams of ``--tokens`` tokens.

On separate hosts replicas share nothing but the ingress, so the expected aggregate of R
replicas is R times the one-replica figure here (the ingress adds the overhead above to each
request's latency, not to decode); this machine's cores are shared by everything, so it cannot
show that scaling itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ggufworker.bench.prompts import PROMPTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Ray benchmark's options (``--model``, ``--tokens``, ``--runs``, ``--threads`` and
    ``--ctx-size`` are shared with the engine benchmark)."""
    g = parser.add_argument_group("Ray Serve path (--ray)")
    g.add_argument(
        "--ray",
        action="store_true",
        help="benchmark --model through Ray Serve (one replica) against the server direct",
    )
    g.add_argument("--ray-requests", type=int, default=20, help="sequential requests per round")
    g.add_argument("--ray-short", type=int, default=8, help="tokens of each sequential request")
    g.add_argument("--ray-clients", type=int, default=4, help="concurrent streams (aggregate)")


def _body(model: str, i: int, tokens: int, *, stream: bool) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": PROMPTS[i % len(PROMPTS)],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


def _latencies(base: str, model: str, n: int, tokens: int) -> list[float]:
    out = []
    with httpx.Client(timeout=300) as client:
        for i in range(n):
            start = time.perf_counter()
            r = client.post(f"{base}/v1/completions", json=_body(model, i, tokens, stream=False))
            r.raise_for_status()
            out.append(time.perf_counter() - start)
    return out


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, int]:
    """(time to first token, chunks) of one streamed completion."""
    start = time.perf_counter()
    first: float | None = None
    chunks = 0
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks += 1
                if first is None:
                    first = time.perf_counter() - start
    return (first if first is not None else float("nan")), chunks


def _ttfts(base: str, model: str, n: int) -> list[float]:
    async def go() -> list[float]:
        async with httpx.AsyncClient(timeout=300) as client:
            url = f"{base}/v1/completions"
            return [
                (await _stream(client, url, _body(model, i, 4, stream=True)))[0] for i in range(n)
            ]

    return asyncio.run(go())


def _aggregate(base: str, model: str, clients: int, tokens: int) -> float:
    """Tokens per second of ``clients`` concurrent streams of ``tokens`` tokens."""

    async def go() -> float:
        async with httpx.AsyncClient(timeout=600) as client:
            url = f"{base}/v1/completions"
            start = time.perf_counter()
            await asyncio.gather(
                *(
                    _stream(client, url, _body(model, i, tokens, stream=True))
                    for i in range(clients)
                )
            )
            return clients * tokens / (time.perf_counter() - start)

    return asyncio.run(go())


@contextlib.contextmanager
def ray_path(path: Path, settings: dict[str, Any], *, cpus: float) -> Iterator[tuple[str, str]]:
    """The model deployed on a local one-node Ray cluster with one replica: (URL, model id)."""
    import ray
    from ray import serve

    from ggufworker.bench.servers import free_port
    from ggufworker.deploy import DeployOptions, build_app

    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = DeployOptions(settings=settings, replicas=1, replica_cpus=cpus)
        serve.run(build_app(options), name="ggufworker", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray deployment did not become ready in 300 s")
            time.sleep(0.2)
        model = httpx.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
        yield base, str(model)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both paths (see the module doc); the result as a dict."""
    from ggufworker.bench.servers import bench_model_path, started_target

    path = bench_model_path(args)
    threads = args.threads or 1
    parallel = max(args.ray_clients, 1)
    settings = {
        "models": [str(path)],
        "threads": threads,
        "ctx_size": args.ctx_size,
        "parallel": parallel,
        "keep_alive": -1,
    }
    cmd = [sys.executable, "-m", "ggufworker", "serve", "--model", str(path)]
    cmd += ["--threads", str(threads), "--ctx-size", str(args.ctx_size)]
    cmd += ["--parallel", str(parallel), "--keep-alive", "-1", "--log-level", "warning"]
    samples: dict[str, dict[str, list[float]]] = {
        name: {"latency_s": [], "ttft_s": [], "aggregate_tps": []} for name in ("direct", "ray")
    }
    with started_target(cmd, 300) as direct, ray_path(path, settings, cpus=threads) as (base, m):
        targets = {"direct": (direct.base, direct.model), "ray": (base, m)}
        for url, model in targets.values():  # warm-up: first loads, first decodes
            _latencies(url, model, 2, args.ray_short)
        for _ in range(max(1, args.runs)):
            for name, (url, model) in targets.items():
                s = samples[name]
                s["latency_s"] += _latencies(url, model, args.ray_requests, args.ray_short)
                s["ttft_s"] += _ttfts(url, model, args.ray_requests)
                s["aggregate_tps"].append(_aggregate(url, model, args.ray_clients, args.tokens))
    result: dict[str, Any] = {
        "model": path.name,
        "threads": threads,
        "requests_per_round": args.ray_requests,
        "short_tokens": args.ray_short,
        "clients": args.ray_clients,
        "tokens": args.tokens,
        "runs": args.runs,
    }
    for name, s in samples.items():
        lat = sorted(s["latency_s"])
        result[name] = {
            "latency_median_s": statistics.median(lat),
            "latency_p90_s": lat[min(len(lat) - 1, int(0.9 * len(lat)))],
            "ttft_median_s": statistics.median(s["ttft_s"]),
            "aggregate_tps": statistics.median(s["aggregate_tps"]),
        }
    d, r = result["direct"], result["ray"]
    result["overhead_ms_per_request"] = 1000 * (r["latency_median_s"] - d["latency_median_s"])
    result["ttft_overhead_ms"] = 1000 * (r["ttft_median_s"] - d["ttft_median_s"])
    result["aggregate_ratio"] = r["aggregate_tps"] / d["aggregate_tps"]
    return result


def format_report(r: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run`'s result."""
    lines = [
        f"model {r['model']}  threads {r['threads']}  runs {r['runs']} (medians)",
        "",
        f"{'path':>8} {'latency s':>10} {'p90 s':>8} {'TTFT s':>8} "
        f"{'agg tok/s @' + str(r['clients']):>16}",
    ]
    for name in ("direct", "ray"):
        p = r[name]
        lines.append(
            f"{name:>8} {p['latency_median_s']:>10.4f} {p['latency_p90_s']:>8.4f} "
            f"{p['ttft_median_s']:>8.4f} {p['aggregate_tps']:>16.1f}"
        )
    lines += [
        "",
        f"Ray path overhead: {r['overhead_ms_per_request']:.1f} ms per request "
        f"({r['short_tokens']} tokens), {r['ttft_overhead_ms']:.1f} ms to first token; "
        f"aggregate ray/direct {r['aggregate_ratio']:.3f}",
        f"expected on R hosts: about R x {r['ray']['aggregate_tps']:.1f} tok/s at "
        f"{r['clients']} clients per replica",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m ggufworker.bench.ray_bench``: the same as ``ggufworker bench --ray``."""
    from ggufworker.paths import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="python -m ggufworker.bench.ray_bench")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctx-size", type=int, default=4096)
    parser.add_argument("--json", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
