"""Serving logic of /v1/chat/completions and /v1/completions.

A request becomes one engine request per choice (``n`` choices, or one per prompt of a batched
completion); their token streams are merged and shaped into OpenAI's responses or SSE chunks.
The request holds a lease on its model until the last event, and cancels its engine requests
when the client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ggufworker.engine.types import GenerationRequest, SamplingParams, TokenEvent
from ggufworker.server.metrics import Metrics
from ggufworker.server.models import Lease, ModelManager
from ggufworker.server.protocol import ChatCompletionRequest, CompletionRequest, new_id
from ggufworker.server.sse import sse_event, sse_response

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

    def _account(self, index: int, event: TokenEvent) -> None:
        choice = self.choices[index]
        now = time.perf_counter()
        if event.token_id is not None:
            choice.tokens += 1
            last = self._last_token[index]
            if last is None:
                ttft = event.time_to_first_token
                self.metrics.ttft.labels(self.lease.name).observe(
                    ttft if ttft is not None else now - self.started
                )
            else:
                self.metrics.itl.labels(self.lease.name).observe(now - last)
            self._last_token[index] = now
        choice.text.append(event.text)
        if event.finish_reason is not None:
            choice.finish_reason = event.finish_reason
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


async def _watch_disconnect(request: Request, generation: Generation) -> None:
    """Cancel a non-streamed request whose client has gone away."""
    while True:
        await asyncio.sleep(DISCONNECT_POLL_S)
        if await request.is_disconnected():
            logger.info("client went away; cancelling %d request(s)", len(generation.handles))
            generation.close()
            return


async def _collect(request: Request, generation: Generation, on_event: Callable[..., None]) -> None:
    watcher = asyncio.create_task(_watch_disconnect(request, generation))
    try:
        async for index, event in generation.events():
            on_event(index, event)
    finally:
        watcher.cancel()
        generation.close()


def _chat_logprob(generation: Generation, event: TokenEvent) -> dict[str, Any]:
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


class OpenAIServing:
    """Chat and text completions over the served models."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics

    # --- chat ------------------------------------------------------------------------------

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        params = body.to_sampling_params()
        messages = body.template_messages()
        lease = await self.manager.acquire(body.model)
        try:
            prompt = lease.engine.render_chat(messages, tools=body.tools)
            reqs = [
                GenerationRequest(prompt=prompt, params=_seeded(params, i), parse_special=True)
                for i in range(body.n)
            ]
            generation = Generation(lease, reqs, self.metrics)
        except BaseException:
            lease.release()
            raise
        rid, created = new_id("chatcmpl"), int(time.time())
        if body.stream:
            return sse_response(self._chat_stream(body, generation, rid, created))
        want_logprobs = body.logprobs

        def on_event(index: int, event: TokenEvent) -> None:
            if want_logprobs and event.token_id is not None:
                generation.choices[index].logprobs.append(_chat_logprob(generation, event))

        await _collect(request, generation, on_event)
        choices = [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": "".join(c.text)},
                "logprobs": {"content": c.logprobs} if want_logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for c in generation.choices
        ]
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": lease.name,
                "choices": choices,
                "usage": generation.usage(shared_prompt=True),
            }
        )

    async def _chat_stream(
        self, body: ChatCompletionRequest, generation: Generation, rid: str, created: int
    ) -> AsyncIterator[bytes]:
        usage_opt = body.include_usage()
        head = {"id": rid, "object": "chat.completion.chunk", "created": created}
        head["model"] = generation.lease.name

        def chunk(choices: list[dict[str, Any]]) -> bytes:
            payload: dict[str, Any] = {**head, "choices": choices}
            if usage_opt:
                payload["usage"] = None
            return sse_event(payload)

        try:
            for c in generation.choices:
                yield chunk(
                    [
                        {
                            "index": c.index,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            async for index, event in generation.events():
                logprobs = None
                if body.logprobs and event.token_id is not None:
                    logprobs = {"content": [_chat_logprob(generation, event)]}
                if event.text or logprobs:
                    yield chunk(
                        [
                            {
                                "index": index,
                                "delta": {"content": event.text},
                                "logprobs": logprobs,
                                "finish_reason": None,
                            }
                        ]
                    )
                if event.finish_reason is not None:
                    yield chunk(
                        [
                            {
                                "index": index,
                                "delta": {},
                                "logprobs": None,
                                "finish_reason": event.finish_reason,
                            }
                        ]
                    )
            if usage_opt:
                yield sse_event(
                    {**head, "choices": [], "usage": generation.usage(shared_prompt=True)}
                )
        finally:
            generation.close()

    # --- completions -----------------------------------------------------------------------

    async def completion(self, body: CompletionRequest, request: Request) -> Response:
        params = body.to_sampling_params()
        prompts = body.prompts()
        lease = await self.manager.acquire(body.model)
        try:
            reqs = [
                GenerationRequest(prompt=p, params=_seeded(params, i), parse_special=False)
                for p in prompts
                for i in range(body.n)
            ]
            generation = Generation(lease, reqs, self.metrics)
        except BaseException:
            lease.release()
            raise
        echo = [
            self._prompt_text(lease, p) if body.echo else "" for p in prompts for _ in range(body.n)
        ]
        rid, created = new_id("cmpl"), int(time.time())
        if body.stream:
            return sse_response(self._completion_stream(body, generation, rid, created, echo))
        want = body.logprobs is not None
        legacy: list[dict[str, list[Any]]] = [_legacy_logprobs() for _ in generation.choices]
        offsets = [len(e) for e in echo]

        def on_event(index: int, event: TokenEvent) -> None:
            if want and event.token_id is not None:
                offsets[index] = _add_legacy(legacy[index], generation, event, offsets[index])

        await _collect(request, generation, on_event)
        choices = [
            {
                "index": c.index,
                "text": echo[c.index] + "".join(c.text),
                "logprobs": legacy[c.index] if want else None,
                "finish_reason": c.finish_reason,
            }
            for c in generation.choices
        ]
        return JSONResponse(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": lease.name,
                "choices": choices,
                "usage": generation.usage(shared_prompt=len(prompts) == 1),
            }
        )

    async def _completion_stream(
        self,
        body: CompletionRequest,
        generation: Generation,
        rid: str,
        created: int,
        echo: list[str],
    ) -> AsyncIterator[bytes]:
        usage_opt = body.include_usage()
        head = {"id": rid, "object": "text_completion", "created": created}
        head["model"] = generation.lease.name
        want = body.logprobs is not None
        offsets = [len(e) for e in echo]

        def chunk(index: int, text: str, finish: str | None, logprobs: Any = None) -> bytes:
            payload: dict[str, Any] = {
                **head,
                "choices": [
                    {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
                ],
            }
            if usage_opt:
                payload["usage"] = None
            return sse_event(payload)

        try:
            for index, text in enumerate(echo):
                if text:
                    yield chunk(index, text, None)
            async for index, event in generation.events():
                logprobs = None
                if want and event.token_id is not None:
                    logprobs = _legacy_logprobs()
                    offsets[index] = _add_legacy(logprobs, generation, event, offsets[index])
                if event.text or logprobs or event.finish_reason:
                    yield chunk(index, event.text, event.finish_reason, logprobs)
            if usage_opt:
                usage = generation.usage(shared_prompt=len(body.prompts()) == 1)
                yield sse_event({**head, "choices": [], "usage": usage})
        finally:
            generation.close()

    @staticmethod
    def _prompt_text(lease: Lease, prompt: str | list[int]) -> str:
        return prompt if isinstance(prompt, str) else lease.engine.detokenize(prompt)


def _seeded(params: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index`` of ``n``: a different seed each, so sampled choices differ."""
    if index == 0 or params.seed is None:
        return params
    from dataclasses import replace

    return replace(params, seed=params.seed + index)


def _legacy_logprobs() -> dict[str, list[Any]]:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _add_legacy(
    out: dict[str, list[Any]], generation: Generation, event: TokenEvent, offset: int
) -> int:
    token = generation.token_piece(event.token_id)
    out["tokens"].append(token)
    out["token_logprobs"].append(event.logprob)
    out["top_logprobs"].append({t.text: t.logprob for t in event.top_logprobs})
    out["text_offset"].append(offset)
    return offset + len(token)
