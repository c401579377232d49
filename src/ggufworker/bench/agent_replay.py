"""`ggufworker bench --agent-replay`: agents resending whole conversations, against llama-server.

C conversations x T turns through streamed ``/v1/chat/completions``. Each conversation opens
with a shared system prompt and a document of ``--history-tokens`` tokens; every turn appends
the answer (``--answer-tokens``, greedy) and a user message, about ``--turn-tokens`` tokens in
all. The conversations are visited in turn, so with more conversations than slots (the default
is twice ``--parallel``) every slot is taken by another conversation between two turns of one:
a server that keeps nothing beyond its slots prefills the whole history again every turn.

For every turn from the second on, the result is its time to first token (TTFT) divided by the
cold TTFT of a prompt of the same length: the same messages behind a system prompt that starts
with a fresh nonce, so no cache holds any of it, measured after the replay. Reported: the median
ratio per conversation count, the cached tokens the server reported, and for our server the
bytes its RAM tier held at most (from ``/metrics``) against ``--cache-ram``; for both servers
their peak resident memory. Servers run one at a time, on the same cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from ggufworker.bench.servers import (
    bench_model_path,
    llama_server_cmd,
    peak_rss_kib,
    started_target,
)

logger = logging.getLogger(__name__)

SYSTEM = "You are a meticulous assistant. Answer from the documents the user gives you."
_PLACES = ("harbor", "archive", "observatory", "mill", "library", "foundry", "orchard", "depot")
_ITEMS = ("crates", "ledgers", "lenses", "barrels", "maps", "bells", "engines", "lanterns")
_ADJ = ("quiet", "amber", "northern", "patient", "careful", "distant", "brisk", "weathered")
_VERBS = ("moved", "counted", "repaired", "sealed", "catalogued", "weighed", "painted", "sorted")
#: characters per token of these sentences (numbers are a token per digit), measured with
#: SmolLM2's tokenizer
CHARS_PER_TOKEN = 2.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ggufworker bench --agent-replay`` (``--model``, ``--threads``,
    ``--llama-server`` and ``--startup-timeout`` are shared with ``--http``)."""
    g = parser.add_argument_group("agent replay (--agent-replay)")
    g.add_argument("--agent-replay", action="store_true", help="run the agent replay instead")
    g.add_argument(
        "--replay-targets",
        default="ggufworker,llama-server",
        help="comma-separated: ggufworker, llama-server (needs --llama-server)",
    )
    g.add_argument("--replay-parallel", type=int, default=2, help="slots of each server")
    g.add_argument(
        "--conversations",
        default=None,
        help="conversation counts, comma-separated (default: 2 x slots, then slots)",
    )
    g.add_argument("--turns", type=int, default=3, help="turns per conversation")
    g.add_argument("--history-tokens", type=int, default=2048, help="the opening document")
    g.add_argument("--turn-tokens", type=int, default=200, help="tokens each turn appends")
    g.add_argument("--answer-tokens", type=int, default=32, help="tokens of each answer")
    g.add_argument("--cache-ram", type=int, default=1024, help="MiB, both servers' --cache-ram")
    g.add_argument("--ctx-checkpoints", type=int, default=8, help="both servers' --ctx-checkpoints")
    g.add_argument("--server-args", default="", help="extra flags of our server, one string")


# --- the conversations ---------------------------------------------------------------------------


def _sentences(seed: int, n_tokens: int) -> str:
    """Varied, deterministic prose of about ``n_tokens`` tokens."""
    parts: list[str] = []
    size, i = 0, 0
    while size < n_tokens * CHARS_PER_TOKEN:
        j = seed * 7919 + i
        s = (
            f"Entry {i + 1} of the {_PLACES[j % 8]} log {seed}: the {_ADJ[(j // 8) % 8]} crew "
            f"{_VERBS[(j // 3) % 8]} {(j * 37) % 900 + 10} {_ITEMS[(j // 5) % 8]} at dock "
            f"{(j * 13) % 97} before {(j * 7) % 12 + 1} o'clock."
        )
        parts.append(s)
        size += len(s) + 1
        i += 1
    return " ".join(parts)


def _opening(conv: int, n_tokens: int, system: str = SYSTEM) -> list[dict[str, str]]:
    doc = _sentences(conv, n_tokens)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Here is a document.\n\n{doc}\n\nWhat did entry 3 record?"},
    ]


def _follow_up(conv: int, turn: int, n_tokens: int) -> dict[str, str]:
    notes = _sentences(1000 + conv * 100 + turn, max(8, n_tokens - 16))
    return {"role": "user", "content": f"More notes:\n{notes}\nWhich dock is mentioned last?"}


# --- one streamed request ------------------------------------------------------------------------


def _chat(client: httpx.Client, base: str, model: str, messages: list, n: int) -> dict[str, Any]:
    """One streamed, greedy chat request: TTFT, the answer, prompt and cached tokens."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": n,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    # a connection per request: llama-server may close a kept-alive one after a stream, and the
    # next request then fails before it is sent
    headers = {"Connection": "close"}
    with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                piece = delta.get("content") or delta.get("reasoning_content") or ""
                if piece and first is None:
                    first = time.perf_counter()
                text.append(delta.get("content") or "")
            usage = chunk.get("usage") or usage
            timings = chunk.get("timings") or timings
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:  # llama-server without the OpenAI field: its own timings
        cached = timings.get("cache_n")
    return {
        "ttft_s": (first or time.perf_counter()) - sent,
        "answer": "".join(text),
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": cached,
    }


def _ram_tier_bytes(client: httpx.Client, base: str) -> tuple[float, float] | None:
    """(bytes the RAM tier holds, its cap) from our server's /metrics."""
    try:
        text = client.get(f"{base}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    held = cap = None
    for line in text.splitlines():
        if line.startswith("ggufworker_prompt_cache_bytes{") and 'tier="ram"' in line:
            held = float(line.rsplit(" ", 1)[1])
        elif line.startswith("ggufworker_prompt_cache_ram_limit_bytes{"):
            cap = float(line.rsplit(" ", 1)[1])
    return (held, cap) if held is not None and cap is not None else None


# --- one replay ---------------------------------------------------------------------------------


def replay(
    base: str, model: str, *, conversations: int, first_id: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Run C conversations x T turns in turn, then the cold references; the summary."""
    turns: list[dict[str, Any]] = []
    ram_peak = 0.0
    ram_cap = None
    history = {c: _opening(first_id + c, args.history_tokens) for c in range(conversations)}
    asked: dict[int, list[dict[str, str]]] = {}  # turn -> conversation 0's messages
    with httpx.Client(timeout=1800) as client:
        for t in range(1, args.turns + 1):
            for c in range(conversations):
                messages = history[c]
                if c == 0:
                    asked[t] = messages
                r = _chat(client, base, model, messages, args.answer_tokens)
                r.update(conversation=c, turn=t)
                turns.append(r)
                ram = _ram_tier_bytes(client, base)
                if ram is not None:
                    ram_peak, ram_cap = max(ram_peak, ram[0]), ram[1]
                logger.info(
                    "conversation %d turn %d: %s prompt tokens, %s cached, TTFT %.3f s",
                    c, t, r["prompt_tokens"], r["cached_tokens"], r["ttft_s"],
                )  # fmt: skip
                reply = {"role": "assistant", "content": r["answer"]}
                more = _follow_up(c, t, args.turn_tokens - args.answer_tokens)
                history[c] = [*messages, reply, more]
        cold: dict[int, float] = {}
        for t in range(2, args.turns + 1):
            nonce = uuid.uuid4().hex[:12]
            messages = [
                {"role": "system", "content": f"Session {nonce}. {SYSTEM}"},
                *asked[t][1:],
            ]
            cold[t] = _chat(client, base, model, messages, 1)["ttft_s"]
    later = [r for r in turns if r["turn"] >= 2]
    ratios = [r["ttft_s"] / cold[r["turn"]] for r in later]
    shares = [
        r["cached_tokens"] / r["prompt_tokens"]
        for r in later
        if r["cached_tokens"] is not None and r["prompt_tokens"]
    ]
    first_turn = [r["ttft_s"] for r in turns if r["turn"] == 1]
    out: dict[str, Any] = {
        "conversations": conversations,
        "ratio_median": round(statistics.median(ratios), 4) if ratios else None,
        "ratio_max": round(max(ratios), 4) if ratios else None,
        "warm_ttft_median_s": round(statistics.median(r["ttft_s"] for r in later), 3)
        if later
        else None,
        "cold_ttft_s": {str(t): round(v, 3) for t, v in cold.items()},
        "first_turn_ttft_median_s": round(statistics.median(first_turn), 3),
        "cached_share_median": round(statistics.median(shares), 3) if shares else None,
        "turns": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "answer"}
            for r in turns
        ],
    }
    if ram_cap is not None:
        out["ram_tier_peak_bytes"] = int(ram_peak)
        out["ram_tier_cap_bytes"] = int(ram_cap)
    return out


def _commands(args: argparse.Namespace, path: Path, ctx: int, threads: int) -> dict[str, list]:
    wanted = [t.strip() for t in args.replay_targets.split(",") if t.strip()]
    cmds: dict[str, list] = {}
    n = args.replay_parallel
    if "ggufworker" in wanted:
        cmds["ggufworker"] = [
            sys.executable, "-m", "ggufworker", "serve", "--model", str(path),
            "--parallel", str(n), "--ctx-size", str(ctx), "--threads", str(threads),
            "--keep-alive", "-1", "--log-level", "warning",
            "--cache-ram", str(args.cache_ram), "--ctx-checkpoints", str(args.ctx_checkpoints),
            *shlex.split(args.server_args),
        ]  # fmt: skip
    if "llama-server" in wanted:
        cmds["llama_server"] = llama_server_cmd(
            args, "-m", str(path), "-t", str(threads), "-tb", str(threads),
            "-np", str(n), "-kvu", "-c", str(ctx * n), "-ngl", "999", "--no-webui",
            "--log-disable", "--cache-ram", str(args.cache_ram),
            "--ctx-checkpoints", str(args.ctx_checkpoints),
        )  # fmt: skip
    return cmds


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Replay the conversations against each target in turn; the results and ratios.

    Raises:
        ModelNotFoundError / DownloadError: the model cannot be resolved.
    """
    path = bench_model_path(args)
    slots = args.replay_parallel
    counts = (
        [int(c) for c in args.conversations.split(",") if c.strip()]
        if args.conversations
        else [2 * slots, slots]
    )
    longest = args.history_tokens + args.turns * args.turn_tokens + 512
    ctx = max(args.ctx_size, longest)
    threads = args.threads or os.cpu_count() or 1
    out: dict[str, Any] = {
        "model": args.model,
        "path": str(path),
        "slots": slots,
        "conversation_counts": counts,
        "turns": args.turns,
        "history_tokens": args.history_tokens,
        "turn_tokens": args.turn_tokens,
        "answer_tokens": args.answer_tokens,
        "cache_ram_mib": args.cache_ram,
        "ctx_checkpoints": args.ctx_checkpoints,
        "ctx_per_slot": ctx,
        "threads": threads,
        "load_before": os.getloadavg(),
        "targets": {},
    }
    for name, cmd in _commands(args, path, ctx, threads).items():
        with started_target(cmd, args.startup_timeout) as target:
            base, model = target.base, target.model
            with httpx.Client(timeout=600) as client:  # warm-up: graphs, first allocations
                _chat(client, base, model, [{"role": "user", "content": "Hello"}], 4)
            results: dict[str, Any] = {}
            for i, c in enumerate(counts):
                logger.info("%s: %d conversations x %d turns", name, c, args.turns)
                results[str(c)] = replay(
                    base, model, conversations=c, first_id=100 * (i + 1), args=args
                )
            results["peak_rss_kib"] = peak_rss_kib(target.pid)
        out["targets"][name] = results
    out["load_after"] = os.getloadavg()
    ours, theirs = out["targets"].get("ggufworker"), out["targets"].get("llama_server")
    if ours and theirs:
        out["ratio_vs_llama_server"] = {
            str(c): _div(ours[str(c)]["ratio_median"], theirs[str(c)]["ratio_median"])
            for c in counts
        }
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def format_report(r: dict[str, Any]) -> str:
    """A table of :func:`run`'s result."""
    lines = [
        f"model {r['model']}  slots {r['slots']}  turns {r['turns']}  history ~"
        f"{r['history_tokens']} tokens  +{r['turn_tokens']} per turn  answers "
        f"{r['answer_tokens']}  threads {r['threads']}  load before "
        f"{r['load_before'][0]:.2f} after {r['load_after'][0]:.2f}",
        "",
        f"{'target':<14}{'convs':>6}{'TTFT t>=2 / cold':>18}{'max':>8}{'warm s':>8}"
        f"{'cold s':>16}{'cached':>8}{'RAM tier MiB':>16}",
    ]
    for name, res in r["targets"].items():
        for c in r["conversation_counts"]:
            x = res[str(c)]
            cold = "/".join(f"{v:.2f}" for v in x["cold_ttft_s"].values())
            ram = ""
            if "ram_tier_peak_bytes" in x:
                ram = (
                    f"{x['ram_tier_peak_bytes'] / 2**20:.0f}/{x['ram_tier_cap_bytes'] / 2**20:.0f}"
                )
            lines.append(
                f"{name:<14}{c:>6}{x['ratio_median'] or 0:>18.3f}{x['ratio_max'] or 0:>8.3f}"
                f"{x['warm_ttft_median_s'] or 0:>8.3f}{cold:>16}"
                f"{x['cached_share_median'] or 0:>8.2f}{ram:>16}"
            )
        lines.append(f"{name:<14} peak RSS {(res.get('peak_rss_kib') or 0) / 1024:.0f} MiB")
    if "ratio_vs_llama_server" in r:
        lines.append(f"ours / llama-server (median ratios): {r['ratio_vs_llama_server']}")
    return "\n".join(lines)
