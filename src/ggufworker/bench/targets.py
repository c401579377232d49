"""Clients of the HTTP benchmark: one streamed request's timing, and the targets that drive a
server over OpenAI's ``/v1/completions`` (SSE) or Ollama's ``/api/generate`` (NDJSON), with the
streams optionally shared out over client processes that start at one agreed moment."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from ggufworker.bench.prompts import PROMPTS


@dataclass
class Stream:
    """Timing of one generation: when it was sent and when each token arrived."""

    sent: float
    token_times: list[float]  # arrival of each piece of text (a token, or several held back)
    completed: bool
    # Tokens generated, from the server's usage report. A streamed chunk can carry several
    # tokens (bytes of one UTF-8 character are held back until it is whole), so counting
    # chunks undercounts; servers without usage in streams fall back to one token per chunk.
    n_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.n_tokens if self.n_tokens is not None else len(self.token_times)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.sent if self.token_times else None

    @property
    def decode_tps(self) -> float | None:
        t = self.token_times
        if len(t) < 2 or t[-1] <= t[0]:
            return None
        return (self.tokens - 1) / (t[-1] - t[0])


async def _sse_lines(r: httpx.Response) -> AsyncIterator[str]:
    """The lines of an event stream. Only CR and LF end a line in SSE; httpx's ``aiter_lines``
    also splits at U+2028, U+0085 and the like, which raw UTF-8 JSON may hold in a string."""
    buf = b""
    async for part in r.aiter_bytes():
        buf += part
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            yield raw.rstrip(b"\r").decode("utf-8", errors="replace")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


async def _http_stream(client: httpx.AsyncClient, url: str, body: dict) -> Stream:
    sent = time.perf_counter()
    times: list[float] = []
    finished = done = False
    n_tokens: int | None = None
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in _sse_lines(r):
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data.strip() == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if chunk.get("usage"):
                n_tokens = int(chunk["usage"]["completion_tokens"])
            for choice in chunk.get("choices") or ():
                if choice.get("text"):
                    times.append(time.perf_counter())
                if choice.get("finish_reason"):
                    finished = True
    return Stream(sent, times, finished and done, n_tokens)


class HttpTarget:
    """An OpenAI-compatible server, driven by streaming /v1/completions requests."""

    def __init__(
        self,
        name: str,
        base: str,
        eos: list[int],
        sampling: dict[str, float] | None = None,
        procs: int = 1,
    ) -> None:
        self.name = name
        self.url = f"{base}/v1/completions"
        self.eos = eos
        self.sampling = sampling or {"temperature": 0}
        self.procs = max(1, procs)
        self._stream = _http_stream

    def _body(self, i: int, max_tokens: int) -> dict:
        return {
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": max_tokens,
            **self.sampling,
            "repeat_penalty": 1.0,
            "logit_bias": {str(t): -100 for t in self.eos},
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def measure(self, n: int, max_tokens: int) -> tuple[float, list[Stream]]:
        bodies = [self._body(i, max_tokens) for i in range(n)]
        procs = min(self.procs, n)
        if procs <= 1:
            return _streams_at(self.url, bodies, time.perf_counter(), self._stream)
        # Several client processes, all starting at one agreed moment (perf_counter is the
        # system's monotonic clock, shared by the processes): wall time from that moment to the
        # last stream's end.
        import concurrent.futures
        import multiprocessing

        shares = [bodies[i::procs] for i in range(procs)]
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as pool:
            list(pool.map(_warm, range(procs)))
            start = time.perf_counter() + 0.5
            parts = list(
                pool.map(
                    _streams_at, [self.url] * procs, shares, [start] * procs, [self._stream] * procs
                )
            )
        streams = [s for _, part in parts for s in part]
        end = max((s.token_times[-1] for s in streams if s.token_times), default=start)
        return max(end - start, 1e-9), streams


def _warm(_: int) -> None:
    """Pool warm-up: import in the workers before the timed start."""


def _streams_at(
    url: str, bodies: list[dict], start: float, stream: Any = None
) -> tuple[float, list[Stream]]:
    """Send ``bodies`` as concurrent streams (``stream``: one request's coroutine function,
    default SSE) from ``start`` (a perf_counter time) on."""
    one = stream or _http_stream

    async def many() -> tuple[float, list[Stream]]:
        limits = httpx.Limits(max_connections=len(bodies) + 2)
        async with httpx.AsyncClient(timeout=900, limits=limits) as client:
            delay = start - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            streams = await asyncio.gather(*[one(client, url, b) for b in bodies])
            return time.perf_counter() - t0, list(streams)

    return asyncio.run(many())


async def _ndjson_stream(client: httpx.AsyncClient, url: str, body: dict) -> Stream:
    """One streamed Ollama request; the token count comes from the final chunk's eval_count."""
    sent = time.perf_counter()
    times: list[float] = []
    done = False
    n_tokens: int | None = None
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.strip():
                continue
            chunk = json.loads(line)
            if chunk.get("error"):
                break
            if chunk.get("response"):
                times.append(time.perf_counter())
            if chunk.get("done"):
                done = True
                n_tokens = chunk.get("eval_count")
    return Stream(sent, times, done, n_tokens)


class OllamaTarget(HttpTarget):
    """Our server through the Ollama API: streaming raw /api/generate requests, greedy, with
    end-of-sequence ignored (our ``ignore_eos`` option) so each makes ``max_tokens`` tokens."""

    def __init__(self, name: str, base: str, model: str) -> None:
        super().__init__(name, base, [])
        self.url = f"{base}/api/generate"
        self.model = model
        self._stream = _ndjson_stream

    def _body(self, i: int, max_tokens: int) -> dict:
        return {
            "model": self.model,
            "prompt": PROMPTS[i % len(PROMPTS)],
            "raw": True,
            "options": {
                "num_predict": max_tokens,
                "temperature": 0,
                "repeat_penalty": 1.0,
                "ignore_eos": True,
            },
        }
