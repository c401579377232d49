"""Several GPUs on one host: split agreement, memory per GPU, replica throughput.

    python3 scripts/multigpu_bench.py split MODEL.gguf [--tokens 64] > split.json
    python3 scripts/multigpu_bench.py replicas MODEL.gguf [--clients 64] > replicas.json

``split`` loads the model once per placement (split mode none on GPU 0 as the reference; layer
and row over every GPU; layer with a 3,1 tensor split; none on GPU 1), records each GPU's memory
taken by the load, the greedy tokens of a few prompts (equal to the reference, or the first
position where they part) and single-stream decode speed.

``replicas`` starts `ggufworker serve` with one replica and with one replica per GPU (the same
slots per replica), sends ``--clients`` concurrent streaming greedy completions, and reports
aggregate tokens per second and how the requests spread over the replicas (from /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import llama_cpp  # noqa: F401  (before numpy: numpy first crashed model loads on the GPU host)

from ggufworker.bench.servers import free_port, server

PROMPTS = (
    "The history of the printing press began when",
    "Explain in detail how a steam engine works, starting with",
    "Once upon a time, in a kingdom by the sea,",
)


def _placements(n_gpus: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("none-gpu0", {"split_mode": "none", "main_gpu": 0})]
    if n_gpus >= 2:
        out += [
            ("layer", {"split_mode": "layer"}),
            ("row", {"split_mode": "row"}),
            ("layer-3-1", {"split_mode": "layer", "tensor_split": [3.0, 1.0]}),
            ("none-gpu1", {"split_mode": "none", "main_gpu": 1}),
        ]
    return out


def split(model: Path, tokens: int) -> dict[str, Any]:
    """Greedy agreement, memory per GPU and decode speed for each placement."""
    from ggufworker.engine import Engine
    from ggufworker.engine.devices import gpu_devices
    from ggufworker.engine.types import GenerationRequest, SamplingParams

    gpus = gpu_devices()
    greedy = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    ref: list[list[int]] | None = None
    runs = []
    for name, placement in _placements(len(gpus)):
        free_before = [d.memory_free for d in gpu_devices()]
        started = time.perf_counter()
        engine = Engine.load(model, n_ctx=2048, n_parallel=1, **placement)
        load_s = time.perf_counter() - started
        used = [b - d.memory_free for b, d in zip(free_before, gpu_devices(), strict=True)]
        try:
            outs, tps = [], []
            for prompt in PROMPTS:
                t0 = time.perf_counter()
                done = engine.generate(GenerationRequest(prompt, greedy))
                tps.append(len(done.token_ids) / (time.perf_counter() - t0))
                outs.append(done.token_ids)
        finally:
            engine.close()
        if ref is None:
            ref = outs
        parted = [
            next((i for i, (a, b) in enumerate(zip(r, o, strict=False)) if a != b), None)
            for r, o in zip(ref, outs, strict=True)
        ]
        runs.append(
            {
                "placement": name,
                "options": placement,
                "load_s": round(load_s, 2),
                "gpu_mib_used": [round(u / 2**20) for u in used],
                "same_tokens_as_gpu0": all(p is None for p in parted),
                "first_difference": parted,
                "decode_tps_single_stream": round(statistics.median(tps), 1),
            }
        )
        print(json.dumps(runs[-1]), file=sys.stderr)
    return {
        "model": str(model),
        "gpus": [f"{d.name} {d.description} {d.memory_total // 2**20} MiB" for d in gpus],
        "tokens": tokens,
        "runs": runs,
    }


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> int:
    n = 0
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    n = int(usage["completion_tokens"])
    return n


def _replica_requests(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics").text
    found = re.findall(r"^ggufworker_replica_requests_total\{([^}]*)\} (\S+)$", text, flags=re.M)
    out = {}
    for labels, value in found:
        parts = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[f"{parts.get('replica')}:{parts.get('device')}"] = float(value)
    return out


def _serve_and_measure(
    model: Path, replicas: int, parallel: int, clients: int, max_tokens: int, runs: int
) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "ggufworker", "serve", "--model", str(model), "--port", str(port),
        "--replicas", str(replicas), "--parallel", str(parallel), "--ctx-size", str(parallel * 512),
        "--max-queue", str(clients), "--keep-alive", "-1", "--log-level", "warning",
    ]  # fmt: skip
    # the benchmark's own server runner: started, waited for, stopped (logs to a temp file)
    with server(cmd, port, 300.0, "/health"):

        async def once() -> tuple[float, int]:
            limits = httpx.Limits(max_connections=clients + 8)
            async with httpx.AsyncClient(timeout=600, limits=limits) as client:
                bodies = [
                    {
                        "prompt": PROMPTS[i % len(PROMPTS)] + f" (request {i})",
                        "max_tokens": max_tokens,
                        "temperature": 0,
                        "ignore_eos": True,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    }
                    for i in range(clients)
                ]
                t0 = time.perf_counter()
                counts = await asyncio.gather(
                    *[_stream(client, f"{base}/v1/completions", b) for b in bodies]
                )
                return time.perf_counter() - t0, sum(counts)

        asyncio.run(once())  # warm-up
        results = [asyncio.run(once()) for _ in range(runs)]
        tps = [n / s for s, n in results]
        return {
            "replicas": replicas,
            "parallel_per_replica": parallel,
            "clients": clients,
            "max_tokens": max_tokens,
            "aggregate_tps": [round(x, 1) for x in tps],
            "median_tps": round(statistics.median(tps), 1),
            "requests_per_replica": _replica_requests(base),
        }


def replicas(model: Path, clients: int, max_tokens: int, runs: int) -> dict[str, Any]:
    """One replica with ``clients`` slots, one with ``clients / n`` slots, and ``n`` replicas
    of ``clients / n`` slots (n: the GPUs, or two CPU engines without a GPU)."""
    from ggufworker.engine.devices import gpu_devices

    gpus = len(gpu_devices())
    n = gpus or 2  # without a GPU: two CPU engines sharing the cores
    per = max(1, clients // n)
    rows = [
        _serve_and_measure(model, 1, clients, clients, max_tokens, runs),
        _serve_and_measure(model, 1, per, clients, max_tokens, runs),
    ]
    rows.append(_serve_and_measure(model, n, per, clients, max_tokens, runs))
    for row in rows:
        print(json.dumps(row), file=sys.stderr)
    return {"model": str(model), "gpus": gpus, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["split", "replicas"])
    parser.add_argument("model", type=Path)
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt (split)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (replicas)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--runs", type=int, default=2, help="measured runs (replicas)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.step == "split":
        result = split(args.model, args.tokens)
    else:
        result = replicas(args.model, args.clients, args.max_tokens, args.runs)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
