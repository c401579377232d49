"""`ggufworker bench --lora-adapters N`: the cost of serving many LoRA adapters on one base.

One engine, one run: ``--lora-clients`` concurrent greedy streams on the base alone, then the
same streams spread round-robin over N adapters (each stream under one adapter), each phase
``--runs`` times (medians). The ratio of the two aggregate tok/s is the price of switching
adapter sets between decode steps (engine/lora.py decodes one set per step). Memory per adapter
is reported twice: its tensor bytes, and the process's resident-memory growth per loaded adapter.

Adapters come from ``--lora-files`` (GGUF adapters for this base), or are made up: rank-8 random
adapters on every attention and MLP projection of the base, written next to the run in a
temporary folder (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: projections a made-up adapter targets (the issue's q/k/v/o/gate/up/down)
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The LoRA benchmark's options (``--model``, ``--tokens``, ``--runs``, ``--threads`` and
    ``--ctx-size`` are shared with the engine benchmark)."""
    g = parser.add_argument_group("LoRA adapters (--lora-adapters)")
    g.add_argument(
        "--lora-adapters",
        type=int,
        default=0,
        metavar="N",
        help="benchmark N adapters on --model against the base alone",
    )
    g.add_argument("--lora-clients", type=int, default=8, help="concurrent streams")
    g.add_argument("--lora-rank", type=int, default=8, help="rank of made-up adapters")
    g.add_argument(
        "--lora-files",
        default="",
        help="comma-separated GGUF adapters for --model (default: made-up random adapters)",
    )


def make_adapter(base: Path, out: Path, *, rank: int, seed: int) -> Path:
    """Write a random rank-``rank`` LoRA adapter GGUF for every targeted projection of ``base``."""
    import gguf

    reader = gguf.GGUFReader(base)
    arch = reader.get_field("general.architecture")
    if arch is None:
        raise ValueError(f"{base}: no general.architecture")
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(out, str(arch.contents()))
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(2 * rank))
    n = 0
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in TARGETS or len(t.shape) != 2:
            continue
        n_in, n_out = (int(d) for d in t.shape)  # ggml order: (in, out)
        stem = t.name
        w.add_tensor(f"{stem}.lora_a", (rng.standard_normal((rank, n_in)) * 0.02).astype("f4"))
        w.add_tensor(f"{stem}.lora_b", (rng.standard_normal((n_out, rank)) * 0.02).astype("f4"))
        n += 1
    if n == 0:
        raise ValueError(f"{base}: no projection tensors to adapt")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _phase(engine: Any, prompts: list[str], loras: list[Any], tokens: int) -> dict[str, float]:
    """``len(prompts)`` concurrent greedy streams (stream i under ``loras[i]``)."""
    from ggufworker.engine import GenerationRequest, SamplingParams

    greedy = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    counts = [0] * len(prompts)
    ttfts = [0.0] * len(prompts)
    start = threading.Barrier(len(prompts) + 1)

    def client(i: int) -> None:
        start.wait()
        t0 = time.perf_counter()
        for ev in engine.submit(GenerationRequest(prompts[i], greedy, lora=loras[i])):
            if ev.token_id is not None:
                if counts[i] == 0:
                    ttfts[i] = time.perf_counter() - t0
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"aggregate_tps": sum(counts) / wall, "ttft_median_s": statistics.median(ttfts)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by the parsed ``args``; returns the result dict."""
    from ggufworker.engine import Engine
    from ggufworker.registry import pull

    path = pull(args.model, home=getattr(args, "home", None), progress=not args.json)
    n_adapters, clients = args.lora_adapters, args.lora_clients
    prompts = [
        f"Request {i}: write a short note about {w} and why it matters."
        for i, w in enumerate(("rivers", "caches", "lanterns", "kernels", "comets", "violins",
                               "engines", "apples", "tensors", "bridges", "forests", "clocks"))
    ][:clients] * (1 + clients // 12)  # fmt: skip
    prompts = prompts[:clients]
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        files = [Path(f) for f in args.lora_files.split(",") if f.strip()]
        if not files:
            files = [
                make_adapter(path, Path(tmp) / f"lora{i}.gguf", rank=args.lora_rank, seed=i)
                for i in range(n_adapters)
            ]
        files = files[:n_adapters]
        engine = Engine.load(
            path, n_ctx=args.ctx_size, n_parallel=clients, n_threads=args.threads,
            n_batch=max(512, clients),
        )  # fmt: skip
        try:
            # the first load also reads the base's tensor table once: measure from the second
            rss0 = _rss_bytes()
            infos = [engine.load_lora("lora0", files[0])]
            rss1 = _rss_bytes()
            infos += [engine.load_lora(f"lora{i}", f) for i, f in enumerate(files) if i]
            rss_per = (_rss_bytes() - rss1) / (len(infos) - 1) if len(infos) > 1 else rss1 - rss0
            base_sets: list[Any] = [()] * clients
            lora_sets: list[Any] = [((f"lora{i % len(infos)}", 1.0),) for i in range(clients)]
            _phase(engine, prompts, base_sets, min(8, args.tokens))  # warm-up
            base, spread = [], []
            for _ in range(args.runs):
                engine.clear_cache()
                base.append(_phase(engine, prompts, base_sets, args.tokens))
                engine.clear_cache()
                spread.append(_phase(engine, prompts, lora_sets, args.tokens))
        finally:
            engine.close()

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    base_tps, lora_tps = med(base, "aggregate_tps"), med(spread, "aggregate_tps")
    return {
        "model": str(path),
        "clients": clients,
        "adapters": len(infos),
        "tokens": args.tokens,
        "runs": args.runs,
        "base": {"aggregate_tps": base_tps, "ttft_median_s": med(base, "ttft_median_s")},
        "lora": {"aggregate_tps": lora_tps, "ttft_median_s": med(spread, "ttft_median_s")},
        "ratio": lora_tps / base_tps if base_tps else float("nan"),
        "adapter_bytes": [i.size_bytes for i in infos],
        "rss_bytes_per_adapter": rss_per,
    }


def format_report(r: dict[str, Any]) -> str:
    """The result as a short table."""
    mib = 1 << 20
    return "\n".join([
        f"model {r['model']}  clients {r['clients']}  adapters {r['adapters']}  "
        f"tokens/stream {r['tokens']}  runs {r['runs']} (medians)",
        "",
        f"{'':<28} {'aggregate tok/s':>16} {'TTFT median s':>14}",
        f"{'base alone':<28} {r['base']['aggregate_tps']:>16.1f} "
        f"{r['base']['ttft_median_s']:>14.3f}",
        f"{'spread over the adapters':<28} {r['lora']['aggregate_tps']:>16.1f} "
        f"{r['lora']['ttft_median_s']:>14.3f}",
        "",
        f"ratio (adapters / base): {r['ratio']:.3f}",
        f"memory per adapter: {statistics.mean(r['adapter_bytes']) / mib:.2f} MiB of tensors, "
        f"{r['rss_bytes_per_adapter'] / mib:.2f} MiB resident",
    ])  # fmt: skip
