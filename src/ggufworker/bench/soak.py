"""`ggufworker bench --soak`: many clients for a while against a real server, mixed traffic.

C clients (asyncio, loopback only) run for S seconds against a `ggufworker serve` subprocess,
each looping over a fixed mix of requests:

- streamed chat completions (read to the end; usage counted),
- non-streamed completions,
- dropped streams (the client closes after the first chunks; the server must free the slot),
- malformed bodies (bad JSON, bad parameters: a 400 in the error envelope is the right answer),
- and, whenever the server answers 429 (queue full), a back-off of ``Retry-After`` seconds.

It reports completed requests, failures by cause, latency p50/p99 of completed generations,
generated tokens per second, and the server's resident memory at start, after warm-up and at the
end. A failure is anything other than the right answer: a 5xx, a wrong status for a malformed
body, a stream that ends without ``[DONE]``, a transport error or a timeout. 429s are not
failures (the client backs off), and they are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from ggufworker.bench.prompts import PROMPTS
from ggufworker.bench.servers import bench_model_path, free_port, rss_kib, server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ggufworker bench --soak`` (``--model``, ``--threads`` are shared)."""
    g = parser.add_argument_group("soak test (--soak)")
    g.add_argument("--soak", action="store_true", help="run the soak test instead")
    g.add_argument("--soak-clients", type=int, default=64, help="concurrent clients")
    g.add_argument("--seconds", type=float, default=120.0, help="how long the clients run")
    g.add_argument("--soak-parallel", type=int, default=8, help="server slots (--parallel)")
    g.add_argument(
        "--soak-queue", type=int, default=None, help="server --max-queue (default: clients)"
    )
    g.add_argument("--soak-max-tokens", type=int, default=32, help="tokens per generation")
    g.add_argument("--soak-seed", type=int, default=0, help="seed of the traffic mix")


#: The request mix: kind -> weight.
MIX = {"chat_stream": 5, "completion": 2, "dropped_stream": 1, "malformed": 1}


@dataclass
class Tally:
    """What the clients saw."""

    completed: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    backoffs: int = 0
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0


async def _chat_stream(
    client: httpx.AsyncClient, base: str, model: str, n: int, prompt: str
) -> tuple[str, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": n,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.8,
    }
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return f"status_{resp.status_code}", 0
        done, tokens = False, 0
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return "stream_error_event", 0
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
        return ("ok", tokens) if done else ("stream_not_finished", 0)


async def _completion(
    client: httpx.AsyncClient, base: str, model: str, n: int, prompt: str
) -> tuple[str, int]:
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0.0}
    resp = await client.post(f"{base}/v1/completions", json=body)
    if resp.status_code != 200:
        return f"status_{resp.status_code}", 0
    return "ok", int(resp.json()["usage"]["completion_tokens"])


async def _dropped_stream(
    client: httpx.AsyncClient, base: str, model: str, n: int, prompt: str
) -> tuple[str, int]:
    body = {"model": model, "prompt": prompt, "max_tokens": max(n, 64), "stream": True}
    async with client.stream("POST", f"{base}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return f"status_{resp.status_code}", 0
        seen = 0
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen >= 2:
                    break  # closing the response here drops the connection mid-stream
    return "ok", 0


def _malformed_bodies(model: str) -> list[tuple[str, bytes]]:
    cut = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    return [
        ("/v1/chat/completions", cut[: len(cut) // 2].encode()),
        ("/v1/chat/completions", json.dumps({"model": model, "messages": "hello"}).encode()),
        ("/v1/completions", json.dumps({"model": model, "prompt": "x", "max_tokens": -3}).encode()),
        ("/v1/completions", json.dumps({"model": model, "prompt": "x", "top_p": 7}).encode()),
    ]  # fmt: skip


async def _malformed(
    client: httpx.AsyncClient, base: str, model: str, n: int, prompt: str
) -> tuple[str, int]:
    path, raw = random.choice(_malformed_bodies(model))
    resp = await client.post(base + path, content=raw, headers={"content-type": "application/json"})
    if resp.status_code == 429:
        return "status_429", 0
    ok = resp.status_code == 400 and "error" in resp.json()
    return ("ok" if ok else f"malformed_got_{resp.status_code}"), 0


_KINDS = {
    "chat_stream": _chat_stream,
    "completion": _completion,
    "dropped_stream": _dropped_stream,
    "malformed": _malformed,
}


async def _client(
    i: int, base: str, model: str, deadline: float, max_tokens: int, tally: Tally, seed: int
) -> None:
    rng = random.Random(seed * 1000 + i)
    kinds = [k for k, w in MIX.items() for _ in range(w)]
    timeout = httpx.Timeout(120.0, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout) as client:
        while time.monotonic() < deadline:
            kind = rng.choice(kinds)
            prompt = PROMPTS[rng.randrange(len(PROMPTS))]
            t0 = time.perf_counter()
            try:
                outcome, tokens = await _KINDS[kind](client, base, model, max_tokens, prompt)
            except httpx.TimeoutException:
                outcome, tokens = "timeout", 0
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                outcome, tokens = f"transport_{type(exc).__name__}", 0
            if outcome == "status_429":
                tally.backoffs += 1
                await asyncio.sleep(1.0)
                continue
            if outcome != "ok":
                tally.failures[f"{kind}:{outcome}"] += 1
                continue
            tally.completed[kind] += 1
            if kind in ("chat_stream", "completion"):
                tally.latencies.append(time.perf_counter() - t0)
                tally.tokens += tokens


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start a server, run the clients for ``--seconds``, return the report as a dict."""
    path = bench_model_path(args)
    clients = args.soak_clients
    port = free_port()
    queue = args.soak_queue if args.soak_queue is not None else clients
    cmd = [
        sys.executable, "-m", "ggufworker", "serve",
        "--model", str(path), "--port", str(port),
        "--parallel", str(args.soak_parallel),
        "--ctx-size", str(max(4096, args.soak_parallel * (args.soak_max_tokens + 256))),
        "--max-queue", str(queue), "--keep-alive", "-1", "--log-level", "warning",
    ]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    tally = Tally()
    rss: dict[str, int | None] = {}
    procs: list[Any] = []
    with server(cmd, port, args.startup_timeout, "/health", procs) as base:
        pid = procs[0].pid
        model = httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["id"]
        rss["start"] = rss_kib(pid)
        started = time.monotonic()
        deadline = started + args.seconds

        async def main() -> None:
            async def warmup_probe() -> None:
                await asyncio.sleep(min(20.0, args.seconds * 0.15))
                rss["after_warmup"] = rss_kib(pid)

            probe = asyncio.create_task(warmup_probe())
            await asyncio.gather(
                *(
                    _client(i, base, model, deadline, args.soak_max_tokens, tally, args.soak_seed)
                    for i in range(clients)
                )
            )
            await probe

        asyncio.run(main())
        elapsed = time.monotonic() - started
        rss["end"] = rss_kib(pid)
        healthy = httpx.get(base + "/health", timeout=5).status_code == 200
    lat = sorted(tally.latencies)
    growth = None
    if rss.get("after_warmup") and rss.get("end"):
        growth = round(rss["end"] / rss["after_warmup"] - 1.0, 4)  # type: ignore[operator]
    return {
        "model": args.model,
        "clients": clients,
        "seconds": round(elapsed, 1),
        "server_parallel": args.soak_parallel,
        "server_max_queue": queue,
        "completed": dict(tally.completed),
        "completed_total": sum(tally.completed.values()),
        "failures": dict(tally.failures),
        "failed_total": sum(tally.failures.values()),
        "backoffs_429": tally.backoffs,
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p99_s": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3) if lat else None,
        "tokens_per_s": round(tally.tokens / elapsed, 1) if elapsed else None,
        "rss_kib": rss,
        "rss_growth_after_warmup": growth,
        "healthy_after": healthy,
    }


def exit_code(r: dict[str, Any]) -> int:
    """1 when a request failed or the server was unhealthy afterwards."""
    return 0 if r["failed_total"] == 0 and r["healthy_after"] else 1


def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run`'s result."""
    rss = r["rss_kib"]
    lines = [
        f"soak: {r['clients']} clients x {r['seconds']} s on {r['model']} "
        f"(server --parallel {r['server_parallel']}, --max-queue {r['server_max_queue']})",
        f"  completed {r['completed_total']} {r['completed']}",
        f"  failed    {r['failed_total']} {r['failures']}",
        f"  429 back-offs {r['backoffs_429']}",
        f"  latency p50 {r['latency_p50_s']} s, p99 {r['latency_p99_s']} s; "
        f"{r['tokens_per_s']} tok/s generated",
        f"  server RSS KiB: start {rss.get('start')}, after warm-up {rss.get('after_warmup')}, "
        f"end {rss.get('end')} (growth after warm-up {r['rss_growth_after_warmup']})",
        f"  server healthy afterwards: {r['healthy_after']}",
    ]
    return "\n".join(lines)
