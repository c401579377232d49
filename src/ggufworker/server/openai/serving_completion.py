"""Serving logic of /v1/completions: raw prompts (text or token ids, one or a batch), with
OpenAI's legacy logprobs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ggufworker.engine.types import GenerationRequest, TokenEvent
from ggufworker.server.core.generation import Generation, collect, seeded, start_generation
from ggufworker.server.core.metrics import Metrics
from ggufworker.server.core.models import Lease, ModelManager
from ggufworker.server.core.protocol import new_id
from ggufworker.server.core.sse import sse_event, sse_response
from ggufworker.server.openai.protocol import CompletionRequest


class CompletionServing:
    """Text completions over the served models."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics

    async def completion(self, body: CompletionRequest, request: Request) -> Response:
        params = body.to_sampling_params()
        prompts = body.prompts()
        shared_prompt = len(prompts) == 1
        lora = body.lora_set()
        generation = await start_generation(
            self.manager,
            self.metrics,
            body.model,
            lambda _: [
                GenerationRequest(
                    prompt=p, params=seeded(params, i), parse_special=False, lora=lora
                )
                for p in prompts
                for i in range(body.n)
            ],
        )
        lease = generation.lease
        echo = [
            self._prompt_text(lease, p) if body.echo else "" for p in prompts for _ in range(body.n)
        ]
        rid, created = new_id("cmpl"), int(time.time())
        if body.stream:
            return sse_response(
                self._completion_stream(body, generation, rid, created, echo, shared_prompt)
            )
        want = body.logprobs is not None
        legacy: list[dict[str, list[Any]]] = [_legacy_logprobs() for _ in generation.choices]
        offsets = [len(e) for e in echo]

        def on_event(index: int, event: TokenEvent) -> None:
            if want and event.token_id is not None:
                offsets[index] = _add_legacy(legacy[index], generation, event, offsets[index])

        await collect(request, generation, on_event)
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
                "usage": generation.usage(shared_prompt=shared_prompt),
            }
        )

    async def _completion_stream(
        self,
        body: CompletionRequest,
        generation: Generation,
        rid: str,
        created: int,
        echo: list[str],
        shared_prompt: bool,
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
                usage = generation.usage(shared_prompt=shared_prompt)
                yield sse_event({**head, "choices": [], "usage": usage})
        finally:
            generation.close()

    @staticmethod
    def _prompt_text(lease: Lease, prompt: str | list[int]) -> str:
        return prompt if isinstance(prompt, str) else lease.engine.detokenize(prompt)


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
