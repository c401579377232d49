"""Serving logic of /v1/chat/completions: render the chat template, generate, shape
OpenAI's chat responses and chunks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ggufworker.engine.types import GenerationRequest, TokenEvent
from ggufworker.server.metrics import Metrics
from ggufworker.server.models import Lease, ModelManager
from ggufworker.server.protocol import ChatCompletionRequest, new_id
from ggufworker.server.serving import (
    Generation,
    chat_logprob,
    collect,
    seeded,
    start_generation,
)
from ggufworker.server.sse import sse_event, sse_response


class ChatServing:
    """Chat completions over the served models."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        params = body.to_sampling_params()
        messages = body.template_messages()

        def make_reqs(lease: Lease) -> list[GenerationRequest]:
            prompt = lease.engine.render_chat(messages, tools=body.tools)
            return [
                GenerationRequest(prompt=prompt, params=seeded(params, i), parse_special=True)
                for i in range(body.n)
            ]

        generation = await start_generation(self.manager, self.metrics, body.model, make_reqs)
        rid, created = new_id("chatcmpl"), int(time.time())
        if body.stream:
            return sse_response(self._chat_stream(body, generation, rid, created))
        want_logprobs = body.logprobs

        def on_event(index: int, event: TokenEvent) -> None:
            if want_logprobs and event.token_id is not None:
                generation.choices[index].logprobs.append(chat_logprob(generation, event))

        await collect(request, generation, on_event)
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
                "model": generation.lease.name,
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
                    logprobs = {"content": [chat_logprob(generation, event)]}
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
