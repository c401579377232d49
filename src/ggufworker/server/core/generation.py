"""Generation plumbing shared by the chat, completions and worker endpoints.

A request becomes one engine request per choice (``n`` choices, or one per prompt of a batched
completion); :class:`Generation` merges their token streams, keeps per-choice counts and
metrics, holds the model's lease until the last event, and cancels the engine requests when
the client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from fastapi import Request
from prometheus_client import Histogram

from ggufworker.engine.types import GenerationRequest, SamplingParams, TokenEvent
from ggufworker.server.core.metrics import Metrics
from ggufworker.server.core.models import Lease, ModelManager

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25
_FINISHED = object()


@dataclass
class Choice:
    """What one choice has produced so far."""

    index: int
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    stop_sequence: str | None = None  # the stop string that ended the choice


class Generation:
    """The engine requests of one HTTP request, merged into one event stream."""

    def __init__(self, lease: Lease, requests: list[GenerationRequest], metrics: Metrics) -> None:
        self.lease = lease
        self.engine = lease.engine
        self.metrics = metrics
        self.started = time.perf_counter()
        self.handles: list[Any] = []
        try:
            for req in requests:
                if req.lora is None and lease.lora is not None:  # a BASE:NAME adapter id
                    req = replace(req, lora=lease.lora)
                self.handles.append(self.engine.submit(req))
        except BaseException:
            self.close()
            raise
        self.choices = [Choice(i) for i in range(len(self.handles))]
        self._last_token: list[float | None] = [None] * len(self.handles)

    def close(self) -> None:
        """Cancel what is still running and give the model back (idempotent)."""
        for handle in self.handles:
            handle.cancel()
        self.lease.release()

    async def events(self) -> AsyncIterator[tuple[int, TokenEvent]]:
        """(choice index, event) pairs as the engine produces them."""
        if len(self.handles) == 1:
            async for event in self.handles[0]:
                self._account(0, event)
                yield 0, event
            return
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(index: int, handle: Any) -> None:
            try:
                async for event in handle:
                    queue.put_nowait((index, event))
            except Exception as exc:
                queue.put_nowait((index, exc))
            finally:
                queue.put_nowait((index, _FINISHED))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(self.handles)]
        try:
            remaining = len(tasks)
            while remaining:
                index, item = await queue.get()
                if item is _FINISHED:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    self._account(index, item)
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()

    # the model's histogram children, looked up on first use (a series shows on /metrics
    # from its first observation)
    @cached_property
    def _ttft(self) -> Histogram:
        return self.metrics.ttft.labels(self.lease.name)

    @cached_property
    def _itl(self) -> Histogram:
        return self.metrics.itl.labels(self.lease.name)

    def _account(self, index: int, event: TokenEvent) -> None:
        choice = self.choices[index]
        now = time.perf_counter()
        if event.token_id is not None:
            choice.tokens += 1
            last = self._last_token[index]
            if last is None:
                ttft = event.time_to_first_token
                self._ttft.observe(ttft if ttft is not None else now - self.started)
            else:
                self._itl.observe(now - last)
            self._last_token[index] = now
        choice.text.append(event.text)
        if event.finish_reason is not None:
            choice.finish_reason = event.finish_reason
            choice.stop_sequence = event.stop_sequence
            if event.usage is not None:
                choice.prompt_tokens = event.usage.prompt_tokens
                choice.cached_tokens = event.usage.cached_tokens
                choice.tokens = event.usage.completion_tokens
            self.metrics.prompt_tokens.labels(self.lease.name).inc(choice.prompt_tokens)
            self.metrics.generation_tokens.labels(self.lease.name).inc(choice.tokens)

    def usage(self, *, shared_prompt: bool) -> dict[str, Any]:
        """OpenAI usage; ``n`` choices of one prompt count the prompt once."""
        prompts = [c.prompt_tokens for c in self.choices]
        prompt = max(prompts, default=0) if shared_prompt else sum(prompts)
        completion = sum(c.tokens for c in self.choices)
        cached = max((c.cached_tokens for c in self.choices), default=0)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def token_piece(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        return self.engine.detokenize([token_id])


async def start_generation(
    manager: ModelManager,
    metrics: Metrics,
    model: str | None,
    make_reqs: Callable[[Lease], list[GenerationRequest]],
) -> Generation:
    """Hold ``model`` and submit the requests ``make_reqs`` builds for it; the lease is given
    back when building or submitting fails."""
    lease = await manager.acquire(model)
    try:
        return Generation(lease, make_reqs(lease), metrics)
    except BaseException:
        lease.release()
        raise


async def _watch_disconnect(request: Request, generation: Generation) -> None:
    """Cancel a non-streamed request whose client has gone away."""
    while True:
        await asyncio.sleep(DISCONNECT_POLL_S)
        if await request.is_disconnected():
            logger.info("client went away; cancelling %d request(s)", len(generation.handles))
            generation.close()
            return


async def collect(request: Request, generation: Generation, on_event: Callable[..., None]) -> None:
    watcher = asyncio.create_task(_watch_disconnect(request, generation))
    try:
        async for index, event in generation.events():
            on_event(index, event)
    finally:
        watcher.cancel()
        generation.close()


def chat_logprob(generation: Generation, event: TokenEvent) -> dict[str, Any]:
    token = generation.token_piece(event.token_id)
    return {
        "token": token,
        "logprob": event.logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode())}
            for t in event.top_logprobs
        ],
    }


def seeded(params: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index`` of ``n``: a different seed each, so sampled choices differ."""
    if index == 0 or params.seed is None:
        return params
    return replace(params, seed=params.seed + index)
