"""Serving logic of the Responses API (``/v1/responses`` and its sub-routes).

A request becomes one :class:`ChatRequest` on the chat pipeline (``server/core/chat.py``: the
template, tools, grammars, reasoning split and batching live there). Its parsed deltas build
the response and the events that tell it (:class:`ResponseBuilder` in ``events.py``); the same
builder serves a plain request, a stream and a background run, so all three produce the same
output. Stored responses (``store``, the default) go to SQLite (``store.py``); background runs
live in this process until they end, and are stored at every status change that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ggufworker.config import ServerSettings
from ggufworker.engine.types import SamplingParams
from ggufworker.errors import InvalidRequestError, ResponseNotFoundError, error_spec
from ggufworker.server.core.chat import (
    ChatAnswer,
    ChatPipeline,
    ChatRequest,
    ChatSession,
)
from ggufworker.server.core.sse import sse_response
from ggufworker.server.openai.responses.events import ResponseBuilder, sse_named
from ggufworker.server.openai.responses.items import (
    items_to_messages,
    normalize_input,
)
from ggufworker.server.openai.responses.objects import (
    ResponseError,
    ResponseObject,
    new_item_id,
)
from ggufworker.server.openai.responses.protocol import (
    InputTokensRequest,
    ResponsesInput,
    ResponsesRequest,
    echo_tools,
)
from ggufworker.server.openai.responses.store import ResponseStore

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25
Event = dict[str, Any]


class ResponseRun:
    """One response being generated: its builder, its chat session and the items it answers."""

    def __init__(
        self,
        builder: ResponseBuilder,
        session: ChatSession,
        items: list[dict[str, Any]],
        store: ResponseStore | None,
    ) -> None:
        self.builder = builder
        self.session = session
        self.items = items
        self.store = store
        self.log: list[Event] = []  # background runs: every event so far, for streams
        self.error: Exception | None = None  # what failed it, when it failed
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def id(self) -> str:
        return self.builder.response.id

    async def save(self) -> None:
        if self.store is not None:
            await self.store.put(self.builder.snapshot(), self.items)

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the response after ``response.created``; the final state is stored
        before the last event goes out, so a client can chain on it at once."""
        builder = self.builder
        answer: ChatAnswer | None = None
        try:
            async for item in self.session.deltas():
                for event in builder.feed(item.delta):
                    yield event
                if item.answer is not None:
                    answer = item.answer
            if answer is None:  # the engine requests were cancelled (client gone)
                builder.cancel()
                return
            final = builder.finish(answer, self.session.usage([answer]))
        except asyncio.CancelledError:
            builder.cancel()
            raise
        except Exception as exc:
            if error_spec(exc).code == "internal_error":
                logger.exception("response %s failed", self.id)
            else:
                logger.warning("response %s failed: %s", self.id, exc)
            self.error = exc
            final = builder.fail(exc)
        finally:
            self.session.close()
        try:
            await self.save()
        except Exception:  # the answer still goes out; it just cannot be retrieved or chained
            logger.exception("response %s could not be stored", self.id)
        for event in final:
            yield event

    # --- background ---------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        self.log.append(event)
        self._wake.set()
        self._wake = asyncio.Event()

    async def drive(self) -> None:
        """The background task: run to the end, keeping every event for streams."""
        try:
            async for event in self.events():
                self.publish(event)
        finally:
            self.done = True
            self._wake.set()

    async def follow(self) -> AsyncIterator[Event]:
        """Every event of a background run, from the first, until it ends."""
        sent = 0
        while True:
            wake = self._wake
            while sent < len(self.log):
                yield self.log[sent]
                sent += 1
            if self.done:
                return
            await wake.wait()


async def _watch_disconnect(request: Request, session: ChatSession) -> None:
    """Cancel a plain (not streamed) request whose client has gone away."""
    while True:
        await asyncio.sleep(DISCONNECT_POLL_S)
        if await request.is_disconnected():
            logger.info("client went away; cancelling the response")
            session.close()
            return


def _for_input(exc: InvalidRequestError) -> InvalidRequestError:
    """A pipeline error named in this API's terms: messages are ``input``; tools are flat."""
    param = exc.param or ""
    if param.startswith("messages"):
        exc.param = "input"
    elif param.startswith("tools[") and ".function." in param:
        return type(exc)(
            str(exc).replace(".function.", "."), param=param.replace(".function.", ".")
        )
    return exc


class ResponsesServing:
    """The Responses API over the chat pipeline and the response store."""

    def __init__(
        self, pipeline: ChatPipeline, store: ResponseStore, settings: ServerSettings | None = None
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.split_thinking = settings is None or settings.reasoning_format == "auto"
        self.live: dict[str, ResponseRun] = {}

    @classmethod
    def from_settings(cls, pipeline: ChatPipeline, settings: ServerSettings) -> ResponsesServing:
        """The Responses API with its store under the settings' home."""
        return cls(pipeline, ResponseStore.from_settings(settings), settings)

    # --- creating --------------------------------------------------------------------------

    async def _conversation(self, body: ResponsesInput) -> list[dict[str, Any]]:
        """The items the model sees: the previous response's items and output, then the input."""
        if body.conversation is not None:
            raise InvalidRequestError(
                "conversation objects are not supported; chain responses with previous_response_id",
                param="conversation",
            )
        new = normalize_input(body.input)
        if body.previous_response_id is None:
            if not new:
                raise InvalidRequestError("input is required", param="input")
            return new
        prev_id = body.previous_response_id
        if prev_id in self.live:
            raise InvalidRequestError(
                f"previous response {prev_id!r} is still in progress",
                param="previous_response_id",
            )
        stored = await self.store.get(prev_id)
        if stored is None:
            raise ResponseNotFoundError(prev_id)
        output = ResponseObject.model_validate(stored.body).output
        return [*stored.items, *(o.model_dump(mode="json") for o in output), *new]

    async def _chat(
        self,
        body: ResponsesInput,
        items: list[dict[str, Any]],
        params: SamplingParams,
        room: int | None,
    ) -> ChatRequest:
        messages = items_to_messages(
            items, instructions=body.instructions, all_turns=body.all_turns
        )
        chat = body.chat_request(messages, params, split_thinking=self.split_thinking)
        if body.truncation == "auto":
            chat = await self._fit(chat, room)
        return chat

    async def _fit(self, chat: ChatRequest, room: int | None) -> ChatRequest:
        """``truncation: auto``: drop the oldest turns (from the second user message on, the
        system message and the last turn always stay) until the prompt leaves ``room`` tokens
        (default a quarter of the context, at most half of it) for the answer."""
        lease = await self.pipeline.manager.acquire(chat.model)
        n_ctx = lease.engine.info.n_ctx
        lease.release()
        limit = max(1, n_ctx - min(room or n_ctx // 4, n_ctx // 2))
        messages = chat.messages
        while True:
            _, n = await self.pipeline.count_tokens(replace(chat, messages=messages))
            shorter = _drop_oldest_turn(messages) if n > limit else None
            if shorter is None:
                return replace(chat, messages=messages)
            messages = shorter

    async def create(self, body: ResponsesRequest, request: Request) -> Response:
        if body.background and not body.stored:
            raise InvalidRequestError("background responses must be stored", param="background")
        items = await self._conversation(body)
        params = body.to_sampling_params()
        chat = await self._chat(body, items, params, body.max_output_tokens)
        fmt = body.text.format if body.text and body.text.format else None
        response = ResponseObject(
            id=new_item_id("resp"),
            created_at=int(time.time()),
            status="queued" if body.background else "in_progress",
            background=body.background,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            max_tool_calls=body.max_tool_calls,
            model=body.model or "",
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            reasoning={
                "effort": body.reasoning.effort if body.reasoning else None,
                "summary": body.reasoning.summary if body.reasoning else None,
            },
            store=body.stored,
            temperature=params.temperature,
            text={
                "format": fmt.model_dump(by_alias=True, exclude_none=True)
                if fmt
                else {"type": "text"},
                "verbosity": body.text.verbosity if body.text else None,
            },
            tool_choice=body.tool_choice or "auto",
            tools=echo_tools(body.tools),
            top_logprobs=body.top_logprobs or 0,
            top_p=params.top_p,
            truncation=body.truncation or "disabled",
            user=body.user,
            metadata=body.metadata or {},
        )
        seal = "reasoning.encrypted_content" in (body.include or [])
        try:
            session = await self.pipeline.start(chat)
        except InvalidRequestError as exc:
            raise _for_input(exc) from None
        response.model = session.model
        run = ResponseRun(
            ResponseBuilder(response, seal=seal),
            session,
            items,
            self.store if body.stored else None,
        )
        if body.background:
            return await self._background(run, stream=body.stream)
        if body.stream:
            return _event_stream(self._stream(run))
        watcher = asyncio.create_task(_watch_disconnect(request, session))
        try:
            async for _ in run.events():
                pass
        finally:
            watcher.cancel()
        if run.error is not None:  # stored as failed; the caller gets the error itself
            raise run.error
        return JSONResponse(run.builder.snapshot())

    async def _stream(self, run: ResponseRun) -> AsyncIterator[bytes]:
        try:
            for event in run.builder.start():
                yield sse_named(event)
            async for event in run.events():
                yield sse_named(event)
        finally:
            run.session.close()  # the client went away: cancel (idempotent after the end)

    async def _background(self, run: ResponseRun, *, stream: bool) -> Response:
        start = run.builder.start()
        for event in start:
            run.publish(event)
        try:
            await run.save()
        except BaseException:
            run.session.close()
            raise
        self.live[run.id] = run
        run.task = asyncio.create_task(self._drive(run))
        if stream:
            return _event_stream(sse_named(e) async for e in run.follow())
        return JSONResponse(run.builder.snapshot())

    async def _drive(self, run: ResponseRun) -> None:
        try:
            await run.drive()
        except asyncio.CancelledError:
            pass  # cancel() and close() store the cancelled state
        finally:
            if run.builder.response.status not in ("cancelled",):
                self.live.pop(run.id, None)

    # --- reading, cancelling, deleting -----------------------------------------------------

    async def retrieve(self, response_id: str) -> dict[str, Any]:
        run = self.live.get(response_id)
        if run is not None:
            return run.builder.snapshot()
        stored = await self.store.get(response_id)
        if stored is None:
            raise ResponseNotFoundError(response_id)
        return stored.body

    async def _stop(self, run: ResponseRun, status: Literal["cancelled", "failed"]) -> None:
        """End a background run and store how it ended."""
        if run.task is not None and not run.task.done():
            run.task.cancel()
            await asyncio.wait({run.task})
        run.session.close()  # a task cancelled before it ran never closed it
        if run.builder.response.status in ("queued", "in_progress"):
            run.builder.cancel()
        if run.builder.response.status == "cancelled":
            if status == "failed":
                run.builder.response.status = "failed"
                run.builder.response.error = ResponseError(
                    code="server_error", message="the server shut down before the response finished"
                )
            await run.save()
        self.live.pop(run.id, None)

    async def cancel(self, response_id: str) -> dict[str, Any]:
        run = self.live.get(response_id)
        if run is not None:
            await self._stop(run, "cancelled")
            return run.builder.snapshot()
        stored = await self.store.get(response_id)
        if stored is None:
            raise ResponseNotFoundError(response_id)
        body = stored.body
        if not body.get("background"):
            raise InvalidRequestError("only background responses can be cancelled")
        if stored.status == "cancelled":
            return body
        if stored.status in ("queued", "in_progress"):  # left by another process
            body["status"] = "cancelled"
            await self.store.put(body, stored.items)
            return body
        raise InvalidRequestError(
            f"cannot cancel a response that has already finished (status {stored.status})"
        )

    async def delete(self, response_id: str) -> dict[str, Any]:
        run = self.live.get(response_id)
        if run is not None:
            await self._stop(run, "cancelled")
        if not await self.store.delete(response_id):
            raise ResponseNotFoundError(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def input_items(
        self,
        response_id: str,
        *,
        order: Literal["asc", "desc"] = "desc",
        limit: int = 20,
        after: str | None = None,
    ) -> dict[str, Any]:
        """A page of the items the response's model saw (the chain before it included)."""
        run = self.live.get(response_id)
        if run is not None:
            items = run.items
        else:
            stored = await self.store.get(response_id)
            if stored is None:
                raise ResponseNotFoundError(response_id)
            items = stored.items
        data = list(items) if order == "asc" else list(reversed(items))
        if after is not None:
            ids = [item.get("id") for item in data]
            if after not in ids:
                raise InvalidRequestError(
                    f"after: no input item {after!r} in this response", param="after"
                )
            data = data[ids.index(after) + 1 :]
        page = data[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(data) > limit,
        }

    async def input_tokens(self, body: InputTokensRequest) -> dict[str, Any]:
        """The input tokens the same create request would report in ``usage.input_tokens``."""
        items = await self._conversation(body)
        chat = await self._chat(body, items, SamplingParams(max_tokens=None), None)
        try:
            _, n = await self.pipeline.count_tokens(chat)
        except InvalidRequestError as exc:
            raise _for_input(exc) from None
        return {"object": "response.input_tokens", "input_tokens": n}

    async def close(self) -> None:
        """Shut down: background runs end as failed (stored so), then the store closes."""
        for run in list(self.live.values()):
            with contextlib.suppress(Exception):
                await self._stop(run, "failed")
        await self.store.close()


def _drop_oldest_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``messages`` without the oldest turn (everything before the second user message after
    the leading system message), or None when only one turn is left."""
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    users = [i for i in range(head, len(messages)) if messages[i]["role"] == "user"]
    if len(users) < 2:
        return None
    return [*messages[:head], *messages[users[1] :]]


def _event_stream(events: AsyncIterator[bytes]) -> Response:
    """Server-sent events; no ``[DONE]`` at the end (the Responses API sends none). A failure
    the builder did not turn into ``response.failed`` is an error event."""
    return sse_response(events, done=False)
