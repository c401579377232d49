"""`ggufworker bench`: throughput and latency against llama.cpp itself, in one run.

Engine level (default): the engine at 1, 2, 4, 8 concurrent streams against the raw low-level
loop and plain ``llama_cpp.Llama`` (see :mod:`ggufworker.bench.engine_bench`). With ``--http``:
the HTTP-level benchmark of :mod:`ggufworker.bench.http` when that module is present. With
``--agent-replay``: conversations resent whole every turn, against llama-server
(:mod:`ggufworker.bench.agent_replay`). With ``--embeddings`` or ``--rerank``: inputs per second
of an embedding or rerank model, batched and concurrent, against llama-server
(:mod:`ggufworker.bench.embed_bench`). With ``--lora-adapters N``: clients spread over N LoRA
adapters of the model against the same clients on the base alone
(:mod:`ggufworker.bench.lora_bench`). With ``--speculation``: speculative decoding per workload
(edit, quote, structured, chat) against no speculation and llama-server's n-gram speculation
(:mod:`ggufworker.bench.spec_bench`).
With ``--rpc-workers N``: the model split over N loopback llama.cpp RPC workers against it
local (:mod:`ggufworker.bench.rpc_bench`).
With ``--ray``: the Ray Serve path's overhead per request against the server direct
(:mod:`ggufworker.bench.ray_bench`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
from typing import Any

from ggufworker.paths import DEFAULT_MODEL

#: benchmark modes, each a module with ``add_arguments``, ``run`` and ``format_report`` (and
#: ``exit_code`` when a result can fail the run): the first whose option is set runs
MODES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ray",), "ray_bench"),
    (("speculation",), "spec_bench"),
    (("rpc_workers",), "rpc_bench"),
    (("lora_adapters",), "lora_bench"),
    (("soak",), "soak"),
    (("embeddings", "rerank"), "embed_bench"),
    (("agent_replay",), "agent_replay"),
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="measure tok/s and time to first token against llama.cpp references",
        description=__doc__,
        conflict_handler="resolve",
    )
    http = _http_module()
    if http is not None:
        http.add_arguments(p)
    p.add_argument("--http", action="store_true", help="HTTP-level benchmark (server)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name or GGUF path")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    p.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported")
    p.add_argument("--streams", default="1,2,4,8", help="concurrent stream counts")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--ctx-size", type=int, default=4096, help="context size (tokens)")
    p.add_argument("--no-reference", action="store_true", help="skip the llama.cpp references")
    p.add_argument(
        "--pipeline",
        choices=("auto", "on", "off"),
        default="auto",
        help="engine steps pipelined with the GPU (auto: when layers are offloaded)",
    )
    p.add_argument(
        "--kv-layout",
        choices=("auto", "unified", "per-slot"),
        default="auto",
        help="the engine's KV cache layout (engine-level benchmark)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    for _, name in MODES:
        _mode(name).add_arguments(p)
    p.set_defaults(func=_main)


def _http_module() -> Any:
    name = "ggufworker.bench.http"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _mode(name: str) -> Any:
    return importlib.import_module(f"ggufworker.bench.{name}")


def _main(args: argparse.Namespace) -> int:
    for options, name in MODES:
        if any(getattr(args, o) for o in options):
            mode = _mode(name)
            result = mode.run(args)
            print(json.dumps(result, indent=2) if args.json else mode.format_report(result))
            return int(mode.exit_code(result)) if hasattr(mode, "exit_code") else 0
    if args.http:
        http = _http_module()
        if http is None:
            raise SystemExit("ggufworker bench: --http needs the server package")
        result = http.run(args)
        print(json.dumps(result, indent=2) if args.json else http.format_report(result))
        return 0
    from ggufworker.bench.engine_bench import bench_engine
    from ggufworker.registry import pull

    path = pull(args.model, home=getattr(args, "home", None), progress=not args.json)
    streams = tuple(int(s) for s in args.streams.split(",") if s.strip())
    result = bench_engine(
        path,
        streams=streams,
        tokens=args.tokens,
        runs=args.runs,
        n_ctx=args.ctx_size,
        n_threads=args.threads,
        references=not args.no_reference,
        pipeline={"auto": None, "on": True, "off": False}[args.pipeline],
        kv_layout=args.kv_layout,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        result.pop("samples", None)
        print(format_report(result))
    return 0


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def format_report(r: dict[str, Any]) -> str:
    """A human-readable table of :func:`~ggufworker.bench.engine_bench.bench_engine`'s result."""
    lines = [
        f"model {r['model']}  tokens/stream {r['tokens']}  runs {r['runs']} (medians)  "
        f"threads {r['threads']}",
        "",
        f"{'streams':>8} {'aggregate tok/s':>16} {'decode tok/s/stream':>20} {'TTFT median s':>14}",
    ]
    for n, e in r["engine"].items():
        lines.append(
            f"{n:>8} {_f(e['aggregate_tps']):>16} {_f(e['decode_tps_per_stream']):>20} "
            f"{_f(e['ttft_median_s'], 3):>14}"
        )
    t = r["second_turn"]
    lines += [
        "",
        f"second chat turn (~1,000-token history): TTFT cold {_f(t['cold_ttft_s'], 3)} s, "
        f"warm {_f(t['warm_ttft_s'], 3)} s, warm/cold {_f(t['warm_vs_cold'], 3)}",
    ]
    p = r["prompt"]
    lines += ["", f"prompt ({p['n_tokens']} tokens): engine {_f(p['engine_tps'])} tok/s"]
    if "raw" in r:
        lines[-1] += f", raw loop {_f(p['raw_tps'])} tok/s"
        lines.append("")
        lines.append("references (same run):")
        for k, v in r["raw"].items():
            lines.append(f"  raw loop {k:<28} {_f(v)}")
        lines.append(f"  llama_cpp.Llama decode_tps{'':<13} {_f(r['llama_cpp']['decode_tps'])}")
        lines.append(f"  llama_cpp.Llama ttft_s{'':<17} {_f(r['llama_cpp']['ttft_s'], 3)}")
        lines.append("")
        lines.append("ratios (engine / raw loop):")
        for k, v in r["ratios"].items():
            lines.append(f"  {k:<36} {_f(v, 3)}")
    return "\n".join(lines)
