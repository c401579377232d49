"""Serving logic of /v1/chat/completions: the request goes through the chat pipeline
(``server/core/chat.py``: template, tools, grammar, reasoning split, batching) and comes back
as OpenAI's chat responses and chunks, ``tool_calls`` and ``reasoning_content`` split out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ggufworker import chat_formats as cf
from ggufworker.config import ServerSettings
from ggufworker.engine.types import TokenEvent
from ggufworker.server.core.chat import ChatAnswer, ChatPipeline, ChatSession
from ggufworker.server.core.generation import chat_logprob
from ggufworker.server.core.protocol import new_id
from ggufworker.server.core.sse import sse_event, sse_response
from ggufworker.server.openai.protocol import ChatCompletionRequest


def message_of(result: cf.ParseResult | ChatAnswer, *, reasoning_shown: bool) -> dict[str, Any]:
    """OpenAI's assistant ``message`` for a parsed answer (reasoning in both field names)."""
    message: dict[str, Any] = {"role": "assistant", "content": result.content or None}
    if result.tool_calls:
        message["tool_calls"] = [
            c.to_openai(c.id or f"call_{i}") for i, c in enumerate(result.tool_calls)
        ]
    elif message["content"] is None:
        message["content"] = ""
    if reasoning_shown and result.reasoning:
        message["reasoning_content"] = result.reasoning
        message["reasoning"] = result.reasoning
    return message


def usage_of(session: ChatSession) -> dict[str, Any]:
    u = session.usage()
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


class ChatServing:
    """Chat completions over the served models."""

    def __init__(self, pipeline: ChatPipeline, settings: ServerSettings | None = None) -> None:
        self.pipeline = pipeline
        self.settings = settings

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        default = self.settings.reasoning_format if self.settings else "auto"
        session = await self.pipeline.start(body.to_chat_request(reasoning_format=default))
        rid = new_id("chatcmpl")
        if body.stream:
            return sse_response(self._chat_stream(body, session, rid))
        generation = session.generation
        want_logprobs = body.logprobs

        def on_event(index: int, event: TokenEvent) -> None:
            if want_logprobs and event.token_id is not None:
                generation.choices[index].logprobs.append(chat_logprob(generation, event))

        answers = await session.answers(request, on_event)
        shown = session.plan.parser.split_thinking
        choices = [
            {
                "index": a.index,
                "message": message_of(a, reasoning_shown=shown),
                "logprobs": (
                    {"content": generation.choices[a.index].logprobs} if want_logprobs else None
                ),
                "finish_reason": a.finish_reason,
            }
            for a in answers
        ]
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "created": session.created,
                "model": session.model,
                "choices": choices,
                "usage": usage_of(session),
            }
        )

    async def _chat_stream(
        self, body: ChatCompletionRequest, session: ChatSession, rid: str
    ) -> AsyncIterator[bytes]:
        usage_opt = body.include_usage()
        head = {"id": rid, "object": "chat.completion.chunk", "created": session.created}
        head["model"] = session.model
        generation = session.generation

        def chunk(
            index: int, delta: dict[str, Any], logprobs: Any = None, finish: Any = None
        ) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            payload: dict[str, Any] = {**head, "choices": [choice]}
            if usage_opt:
                payload["usage"] = None
            return sse_event(payload)

        def delta_of(d: cf.StreamDelta) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if d.reasoning:
                out["reasoning_content"] = d.reasoning
                out["reasoning"] = d.reasoning
            if d.content:
                out["content"] = d.content
            if d.tool_calls:
                out["tool_calls"] = [t.to_openai() for t in d.tool_calls]
            return out

        try:
            for c in generation.choices:
                yield chunk(c.index, {"role": "assistant", "content": ""})
            async for item in session.deltas():
                event = item.event
                logprobs = None
                if body.logprobs and event.token_id is not None:
                    logprobs = {"content": [chat_logprob(generation, event)]}
                if item.delta or logprobs:
                    yield chunk(item.index, delta_of(item.delta), logprobs)
                if item.answer is not None:
                    yield chunk(item.index, {}, None, item.answer.finish_reason)
            if usage_opt:
                yield sse_event({**head, "choices": [], "usage": usage_of(session)})
        finally:
            session.close()
