"""Serving logic of ``POST /v1/messages`` and ``/v1/messages/count_tokens``: the request goes
through the chat pipeline (``server/core/chat.py``: template, tools, grammars, thinking split
and budget, batching) and comes back as Anthropic's message, or as its server-sent events.

A message's content blocks come in a fixed order: ``thinking`` (when the model thought), then
``text``, then ``tool_use`` blocks; streamed, each block is opened, filled by deltas and closed
before the next (``signature_delta`` closes a thinking block). Text a model writes after its
tool calls is joined to the text block when not streamed and streamed as a text block after
the calls (the stream cannot go back).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ggufworker import chat_formats as cf
from ggufworker.errors import error_spec
from ggufworker.server.anthropic.protocol import (
    CountTokensRequest,
    CountTokensResponse,
    MessageCreateRequest,
    MessageResponse,
    TextContent,
    ThinkingContent,
    ToolUseContent,
    Usage,
)
from ggufworker.server.core.chat import ChatAnswer, ChatPipeline, ChatSession
from ggufworker.server.core.sse import SSE_HEADERS, error_payload

logger = logging.getLogger(__name__)

#: seconds without an event after which a stream sends a ``ping`` (a long prompt on a CPU
#: can take minutes to read; proxies and clients drop connections that stay silent)
PING_INTERVAL_S = 10.0

T = TypeVar("T")


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def tool_use_id(call_id: str | None) -> str:
    """Anthropic's ``toolu_...`` id for a call id of the pipeline (the same id each time, so
    the id a client sends back maps to the same template id as the call's)."""
    if call_id and call_id.startswith("toolu_"):
        return call_id
    return "toolu_" + (call_id or secrets.token_hex(12)).removeprefix("call_")


def signature(thinking: str) -> str:
    """An opaque ``signature`` for a thinking block (its text's digest; never checked)."""
    return hashlib.sha256(thinking.encode()).hexdigest()


def stop_reason(answer: ChatAnswer) -> str:
    if answer.finish_reason == "tool_calls":
        return "tool_use"
    if answer.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if answer.stop_sequence else "end_turn"


def _input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:  # cut off by max_tokens
        return {}
    return value if isinstance(value, dict) else {}


def usage_of(session: ChatSession) -> Usage:
    """Anthropic's usage: ``input_tokens`` are the prompt tokens not read from the KV cache,
    ``cache_read_input_tokens`` the ones that were (together: every prompt token)."""
    u = session.usage()
    cached = min(u.cached_tokens, u.prompt_tokens)
    return Usage(
        input_tokens=u.prompt_tokens - cached,
        output_tokens=u.completion_tokens,
        cache_read_input_tokens=cached,
    )


def message_of(answer: ChatAnswer, *, mid: str, model: str, usage: Usage) -> MessageResponse:
    """The message for a finished answer."""
    content: list[Any] = []
    if answer.reasoning:
        content.append(
            ThinkingContent(thinking=answer.reasoning, signature=signature(answer.reasoning))
        )
    if answer.content:
        content.append(TextContent(text=answer.content))
    for call in answer.tool_calls:
        content.append(
            ToolUseContent(id=tool_use_id(call.id), name=call.name, input=_input(call.arguments))
        )
    return MessageResponse(
        id=mid,
        model=model,
        content=content,
        stop_reason=stop_reason(answer),  # type: ignore[arg-type]
        stop_sequence=answer.stop_sequence,
        usage=usage,
    )


def event(name: str, payload: dict[str, Any]) -> bytes:
    """One Anthropic server-sent event: ``event: <name>`` and its JSON ``data``."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


class BlockStream:
    """Pipeline deltas as Anthropic content-block events: one block open at a time."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None  # the open block's type
        self.thinking = ""  # the open thinking block's text, for its signature
        self.calls: dict[int, int] = {}  # the pipeline's call index -> block index

    def feed(self, delta: cf.StreamDelta) -> list[bytes]:
        """The events for one delta (thinking, then text, then tool-call pieces)."""
        out: list[bytes] = []
        if delta.reasoning:
            if self.kind != "thinking":
                out += self._start({"type": "thinking", "thinking": "", "signature": ""})
            self.thinking += delta.reasoning
            out.append(
                self._delta(self.index, {"type": "thinking_delta", "thinking": delta.reasoning})
            )
        if delta.content:
            if self.kind != "text":
                out += self._start({"type": "text", "text": ""})
            out.append(self._delta(self.index, {"type": "text_delta", "text": delta.content}))
        for piece in delta.tool_calls:
            if piece.name is not None:
                block = {"type": "tool_use", "id": tool_use_id(piece.id), "name": piece.name}
                out += self._start({**block, "input": {}})
                self.calls[piece.index] = self.index
            index = self.calls.get(piece.index)
            if piece.arguments and index is not None:
                json_delta = {"type": "input_json_delta", "partial_json": piece.arguments}
                out.append(self._delta(index, json_delta))
        return out

    def close(self) -> list[bytes]:
        """Close the open block (a thinking block gets its signature first)."""
        if self.kind is None:
            return []
        out = []
        if self.kind == "thinking":
            sig = {"type": "signature_delta", "signature": signature(self.thinking)}
            out.append(self._delta(self.index, sig))
            self.thinking = ""
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
        self.kind = None
        return out

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        out = self.close()
        self.index += 1
        self.kind = str(block["type"])
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        out.append(event("content_block_start", start))
        return out

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> bytes:
        return event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )


async def with_pings(items: AsyncIterator[T], interval: float) -> AsyncGenerator[T | None, None]:
    """``items``, with None whenever ``interval`` seconds pass without one (a ping is due).

    When the consumer stops, the source is closed: a step in flight is cancelled (nothing is
    awaited, so a cancelled consumer is not held up), an idle source is closed with
    ``aclose``; either way its ``finally`` blocks run."""

    async def step() -> T:
        return await anext(items)

    pending: asyncio.Task[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(step())
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()  # the source sees the cancellation inside its step and closes
        elif (aclose := getattr(items, "aclose", None)) is not None:
            await aclose()


class MessagesServing:
    """The Anthropic Messages API over the chat pipeline."""

    def __init__(self, pipeline: ChatPipeline) -> None:
        self.pipeline = pipeline

    async def create(self, body: MessageCreateRequest, request: Request) -> Response:
        """``POST /v1/messages``: a message, or its events with ``stream``.

        Raises:
            ModelNotFoundError, InvalidRequestError, QueueFullError, ...: before anything is
                generated (answered as HTTP errors in Anthropic's envelope).
        """
        session = await self.pipeline.start(body.to_chat_request())
        mid = message_id()
        if body.stream:
            events = self._stream(session, mid, request.url.path)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        try:
            answers = await session.answers(request)
        finally:
            session.close()
        message = message_of(answers[0], mid=mid, model=session.model, usage=usage_of(session))
        return JSONResponse(message.model_dump(mode="json"))

    async def count_tokens(self, body: CountTokensRequest) -> CountTokensResponse:
        """``POST /v1/messages/count_tokens``: every prompt token ``create`` would take."""
        _, tokens = await self.pipeline.count_tokens(body.to_chat_request())
        return CountTokensResponse(input_tokens=tokens)

    async def _stream(self, session: ChatSession, mid: str, path: str) -> AsyncIterator[bytes]:
        blocks = BlockStream()
        try:
            # the whole prompt; message_delta splits it into read and cached tokens at the end
            prompt = session.generation.engine.tokenize(
                session.plan.prompt, add_special=True, parse_special=True
            )
            start = MessageResponse(
                id=mid,
                model=session.model,
                content=[],
                stop_reason=None,
                usage=Usage(input_tokens=len(prompt), output_tokens=0),
            )
            yield event("message_start", {"type": "message_start", "message": start.model_dump()})
            yield event("ping", {"type": "ping"})
            answer: ChatAnswer | None = None
            async with aclosing(with_pings(session.deltas(), PING_INTERVAL_S)) as items:
                async for item in items:
                    if item is None:
                        yield event("ping", {"type": "ping"})
                        continue
                    for chunk in blocks.feed(item.delta):
                        yield chunk
                    if item.answer is not None:
                        answer = item.answer
            for chunk in blocks.close():
                yield chunk
            assert answer is not None, "the pipeline ended a stream without its answer"
            usage = usage_of(session).model_dump()
            delta = {"stop_reason": stop_reason(answer), "stop_sequence": answer.stop_sequence}
            yield event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            yield event("message_stop", {"type": "message_stop"})
        except Exception as exc:
            if error_spec(exc).code == "internal_error":
                logger.exception("stream failed")
            else:
                logger.warning("stream failed: %s", exc)
            yield event("error", error_payload(exc, path))
        finally:
            session.close()
