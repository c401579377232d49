"""`ggufworker bench --speculation`: speculative decoding against no speculation and against
llama-server's own n-gram speculation, in one run.

Workloads that say what they are, each greedy and sampled (temperature 0.7, fixed seeds):
``edit`` (rewrite a given source file with one small change), ``quote`` (answer by quoting a
given document), ``structured`` (continue a repetitive CSV listing), ``chat`` (free text). The
targets are all started at once and asked in turn each round: ggufworker without and with
``--spec-type ngram`` (``ggufworker-ngram-always``: without the planner), llama-server without
and with ``--spec-type ngram-simple``. For every workload the report gives the median tok/s
over ``--runs`` (``--spec-clients`` concurrent requests each), the ratios that matter, and the
share of the output's character 12-grams found in the prompt, so that a speed-up is read
against how much the model actually copies.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ggufworker.bench.servers import bench_model_path, llama_server_cmd, started_target

_FILE = "\n".join(
    [
        "import math",
        "",
        "",
        "class Shape:",
        '    """A plane figure."""',
        "",
        "    def area(self) -> float:",
        "        raise NotImplementedError",
        "",
        "    def perimeter(self) -> float:",
        "        raise NotImplementedError",
        "",
        "",
        "class Rectangle(Shape):",
        "    def __init__(self, width: float, height: float) -> None:",
        "        self.width = width",
        "        self.height = height",
        "",
        "    def area(self) -> float:",
        "        return self.width * self.height",
        "",
        "    def perimeter(self) -> float:",
        "        return 2 * (self.width + self.height)",
        "",
        "",
        "class Circle(Shape):",
        "    def __init__(self, radius: float) -> None:",
        "        self.radius = radius",
        "",
        "    def area(self) -> float:",
        "        return math.pi * self.radius ** 2",
        "",
        "    def perimeter(self) -> float:",
        "        return 2 * math.pi * self.radius",
        "",
        "",
        "def total_area(shapes: list[Shape]) -> float:",
        "    return sum(s.area() for s in shapes)",
    ]
)
_DOC = (
    "The library opens at nine in the morning and closes at six in the evening. Members may "
    "borrow up to ten books at a time for three weeks. Late returns cost twenty cents per day "
    "per book. The reading room on the second floor is reserved for quiet study. Printers are "
    "available near the entrance; each page costs ten cents. Children under twelve must be "
    "accompanied by an adult after four in the afternoon. The library is closed on public "
    "holidays and on the first Monday of every month for maintenance."
)
_CSV = "id,name,city,age\n" + "\n".join(
    f"{i},{n},{c},{20 + i}"
    for i, (n, c) in enumerate(
        [("Alice", "Paris"), ("Bob", "Berlin"), ("Carol", "Madrid"), ("Dave", "Rome"),
         ("Eve", "Lisbon"), ("Frank", "Vienna"), ("Grace", "Prague"), ("Heidi", "Oslo")], 1
    )
)  # fmt: skip

WORKLOADS = {
    "edit": "Rewrite this Python file with the method `perimeter` renamed to `boundary`. "
    f"Output the whole file.\n\n```python\n{_FILE}\n```",
    "quote": f"Here is a notice:\n\n{_DOC}\n\nQuote, word for word, the sentences about "
    "borrowing books and late returns.",
    "structured": f"Continue this CSV with ten more rows in the same format:\n\n{_CSV}\n",
    "chat": "Tell me a short story about a lighthouse keeper and a storm.",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The speculation benchmark's options (``--model``, ``--tokens``, ``--runs``,
    ``--threads``, ``--llama-server`` and ``--startup-timeout`` are shared)."""
    g = parser.add_argument_group("speculative decoding (--speculation)")
    g.add_argument(
        "--speculation", action="store_true", help="benchmark speculative decoding per workload"
    )
    g.add_argument(
        "--spec-targets",
        default="ggufworker,ggufworker-ngram,llama-server,llama-server-ngram",
        help="comma-separated: ggufworker, ggufworker-ngram, ggufworker-ngram-always (drafts "
        "without the planner), llama-server, llama-server-ngram",
    )
    g.add_argument("--spec-clients", type=int, default=1, help="concurrent requests")
    g.add_argument(
        "--spec-workloads", default=",".join(WORKLOADS), help="comma-separated workloads"
    )
    g.add_argument("--spec-server-args", default="", help="extra arguments for ggufworker serve")


def copy_share(prompt: str, output: str, n: int = 12) -> float | None:
    """Share of the output's character n-grams (whitespace runs as one space) that occur in
    the prompt: how much of the answer is copied (None: output too short). Characters, not
    words, so that CSV rows and code count as well as prose."""

    def grams(text: str) -> list[str]:
        t = " ".join(text.split())
        return [t[i : i + n] for i in range(len(t) - n + 1)]

    out = grams(output)
    if not out:
        return None
    seen = set(grams(prompt))
    return sum(g in seen for g in out) / len(out)


def _commands(args: argparse.Namespace, path: Path, threads: int) -> dict[str, list[str]]:
    n = max(1, args.spec_clients)
    ctx = 4096 * n
    wanted = [t.strip() for t in args.spec_targets.split(",") if t.strip()]
    ours = [
        sys.executable, "-m", "ggufworker", "serve", "--model", str(path),
        "--parallel", str(n), "--ctx-size", str(4096), "--threads", str(threads),
        "--keep-alive", "-1", "--log-level", "warning", *args.spec_server_args.split(),
    ]  # fmt: skip
    peer = [
        "-m", str(path), "-t", str(threads), "-tb", str(threads), "-np", str(n), "-c", str(ctx),
        "--no-webui", "--log-disable",
    ]  # fmt: skip
    cmds: dict[str, list[str]] = {}
    for name in wanted:
        if name == "ggufworker":
            cmds[name] = ours
        elif name == "ggufworker-ngram":
            cmds[name] = [*ours, "--spec-type", "ngram"]
        elif name == "ggufworker-ngram-always":  # no planner: every draft found is verified
            cmds[name] = [*ours, "--spec-type", "ngram", "--no-spec-adaptive"]
        elif name == "llama-server":
            cmds[name] = llama_server_cmd(args, *peer)
        elif name == "llama-server-ngram":
            cmds[name] = llama_server_cmd(args, *peer, "--spec-type", "ngram-simple")
        else:
            raise SystemExit(f"ggufworker bench: unknown --spec-targets entry {name!r}")
    return cmds


def _one(base: str, model: str, prompt: str, tokens: int, seed: int, temp: float) -> tuple:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": temp,
        "seed": seed,
    }
    t0 = time.perf_counter()
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    took = time.perf_counter() - t0
    data = r.json()
    return data["usage"]["completion_tokens"], took, data["choices"][0]["message"]["content"]


def _round(base: str, model: str, prompt: str, args: argparse.Namespace, temp: float, run: int):
    n = max(1, args.spec_clients)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        futs = [
            pool.submit(_one, base, model, prompt, args.tokens, 1000 * run + i, temp)
            for i in range(n)
        ]
        res = [f.result() for f in futs]
        wall = time.perf_counter() - t0
    return sum(r[0] for r in res) / wall, res[0][2]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by the parsed ``args``; returns the result dict."""
    import os

    path = bench_model_path(args)
    threads = args.threads or os.cpu_count() or 1
    loads = [w.strip() for w in args.spec_workloads.split(",") if w.strip()]
    for w in loads:
        if w not in WORKLOADS:
            raise SystemExit(f"ggufworker bench: unknown workload {w!r}")
    out: dict[str, Any] = {
        "model": str(path), "clients": args.spec_clients, "tokens": args.tokens,
        "runs": args.runs, "targets": {},
    }  # fmt: skip
    keys = [(w, mode, temp) for w in loads for mode, temp in (("greedy", 0.0), ("sampled", 0.7))]
    tps: dict[str, dict[str, list[float]]] = {}
    copy: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        # every server up at once (idle ones cost nothing), rounds interleaved: each run asks
        # every target in turn, so a slow minute of the machine hits them all alike
        targets = {
            name: stack.enter_context(started_target(cmd, args.startup_timeout))
            for name, cmd in _commands(args, path, threads).items()
        }
        for target in targets.values():
            _one(target.base, target.model, "Hello", 8, 0, 0.0)  # warm-up
        for r in range(args.runs):
            for w, mode, temp in keys:
                for name, target in targets.items():
                    rate, text = _round(target.base, target.model, WORKLOADS[w], args, temp, r)
                    tps.setdefault(name, {}).setdefault(f"{w}/{mode}", []).append(rate)
                    share = copy_share(WORKLOADS[w], text)
                    if share is not None:
                        copy.setdefault(name, {}).setdefault(f"{w}/{mode}", []).append(share)
        for name, target in targets.items():  # our servers' counters over the whole run
            if name.startswith("ggufworker"):
                out.setdefault("spec_counters", {})[name] = _spec_counters(target.base)
    for name, per in tps.items():
        out["targets"][name] = {
            k: {
                "tok_s": statistics.median(v),
                "samples": v,
                "copy_share": statistics.median(copy[name][k])
                if copy.get(name, {}).get(k)
                else None,
            }
            for k, v in per.items()
        }
    out["ratios"] = _ratios(out["targets"])
    return out


def _spec_counters(base: str) -> dict[str, float]:
    """Drafted and accepted tokens from a ggufworker server's /metrics (summed over models)."""
    out = {"drafts": 0.0, "draft_tokens": 0.0, "accepted_tokens": 0.0}
    names = {
        "ggufworker_spec_decode_num_drafts_total": "drafts",
        "ggufworker_spec_decode_num_draft_tokens_total": "draft_tokens",
        "ggufworker_spec_decode_num_accepted_tokens_total": "accepted_tokens",
    }
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            out[names[name]] += float(line.rsplit(" ", 1)[1])
    return out


def _ratios(targets: dict[str, Any]) -> dict[str, dict[str, float]]:
    pairs = {
        "ngram_vs_plain": ("ggufworker-ngram", "ggufworker"),
        "always_vs_plain": ("ggufworker-ngram-always", "ggufworker"),
        "ngram_vs_llama_server_ngram": ("ggufworker-ngram", "llama-server-ngram"),
        "llama_server_ngram_vs_plain": ("llama-server-ngram", "llama-server"),
        "plain_vs_llama_server": ("ggufworker", "llama-server"),
    }
    out: dict[str, dict[str, float]] = {}
    for label, (a, b) in pairs.items():
        if a in targets and b in targets:
            out[label] = {
                k: targets[a][k]["tok_s"] / targets[b][k]["tok_s"]
                for k in targets[a]
                if k in targets[b] and targets[b][k]["tok_s"]
            }
    return out


def format_report(r: dict[str, Any]) -> str:
    names = list(r["targets"])
    keys = list(next(iter(r["targets"].values()))) if names else []
    lines = [
        f"speculation: {r['model']}, {r['clients']} client(s), {r['tokens']} tokens, "
        f"medians of {r['runs']}",
        "workload            " + "".join(f"{n:>20}" for n in names) + "   copy",
    ]
    for k in keys:
        row = "".join(f"{r['targets'][n][k]['tok_s']:>20.1f}" for n in names)
        share = r["targets"][names[0]][k]["copy_share"]
        lines.append(f"{k:<20}{row}   {'-' if share is None else f'{share:.2f}'}")
    for label, ratios in r["ratios"].items():
        lines.append(f"{label}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    for name, c in r.get("spec_counters", {}).items():
        if c["draft_tokens"]:
            lines.append(
                f"{name}: {c['draft_tokens']:.0f} draft tokens in {c['drafts']:.0f} "
                f"verifications, {c['accepted_tokens'] / c['draft_tokens']:.0%} accepted"
            )
    return "\n".join(lines)
