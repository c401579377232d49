"""Serving logic of the Responses API (``/v1/responses`` and its sub-routes).

A request becomes one :class:`ChatRequest` on the chat pipeline (``server/core/chat.py``: the
template, tools, grammars, reasoning split and batching live there). Its parsed deltas build
the response and the events that tell it (:class:`ResponseBuilder`); the same builder serves a
plain request, a stream and a background run, so all three produce the same output. Stored
responses (``store``, the default) go to SQLite (``responses_store.py``); background runs live
in this process until they end, and are stored at every status change that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ggufworker import chat_formats as cf
from ggufworker.config import ServerSettings
from ggufworker.engine.types import SamplingParams
from ggufworker.errors import InvalidRequestError, error_spec
from ggufworker.server.core.chat import (
    ChatAnswer,
    ChatPipeline,
    ChatRequest,
    ChatSession,
    ChatUsage,
)
from ggufworker.server.core.sse import error_payload, sse_response
from ggufworker.server.openai.responses_protocol import (
    FunctionCallItem,
    IncompleteDetails,
    InputTokensRequest,
    OutputMessage,
    OutputText,
    ReasoningItem,
    ReasoningPart,
    ResponseError,
    ResponseObject,
    ResponsesInput,
    ResponsesRequest,
    ResponseUsage,
    echo_tools,
    items_to_messages,
    new_item_id,
    normalize_input,
    seal_reasoning,
)
from ggufworker.server.openai.responses_store import ResponseStore

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25
Event = dict[str, Any]


class ResponseNotFoundError(HTTPException):
    """No stored (or running) response has this id: 404 in OpenAI's envelope."""

    def __init__(self, response_id: str) -> None:
        super().__init__(404, f"Response with id {response_id!r} not found.")


def sse_named(event: Event) -> bytes:
    """One server-sent event as the Responses API sends it: ``event: <type>`` and its data."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class ResponseBuilder:
    """One response, built from the pipeline's deltas, and the events that tell it.

    Text and reasoning each make one output item with one content part; every tool call is a
    ``function_call`` item. An item is closed (its ``.done`` events) when an item of another kind
    starts or the answer ends.
    """

    def __init__(self, response: ResponseObject, *, seal: bool = False) -> None:
        self.response = response
        self.seal = seal
        self.seq = 0
        self._text: tuple[str, int] | None = None  # (message | reasoning, output index)
        self._calls: dict[int, int] = {}  # tool-call index -> output index, while open
        self._closed_calls: dict[int, int] = {}

    def event(self, kind: str, **fields: Any) -> Event:
        out = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return out

    def snapshot(self) -> dict[str, Any]:
        return self.response.model_dump(mode="json")

    def _whole(self, kind: str) -> Event:
        return self.event(kind, response=self.snapshot())

    def start(self) -> list[Event]:
        events = [self._whole("response.created")]
        if self.response.status == "in_progress":
            events.append(self._whole("response.in_progress"))
        return events

    def feed(self, delta: cf.StreamDelta) -> list[Event]:
        """The events for one parsed delta (text, reasoning and tool-call pieces)."""
        out: list[Event] = []
        if self.response.status == "queued":
            self.response.status = "in_progress"
            out.append(self._whole("response.in_progress"))
        if delta.reasoning:
            out += self._piece("reasoning", delta.reasoning)
        if self._calls:  # text after calls comes with the last delta: calls first
            for call in delta.tool_calls:
                out += self._call(call)
            if delta.content:
                out += self._piece("message", delta.content)
            return out
        if delta.content:
            out += self._piece("message", delta.content)
        for call in delta.tool_calls:
            out += self._call(call)
        return out

    def _piece(self, kind: str, text: str) -> list[Event]:
        out: list[Event] = []
        if self._text is None or self._text[0] != kind:
            out += self._close_all("completed")
            out += self._open_text(kind)
        assert self._text is not None
        index = self._text[1]
        item = self.response.output[index]
        where = {"item_id": item.id, "output_index": index, "content_index": 0}
        if isinstance(item, OutputMessage):
            item.content[0].text += text
            out.append(self.event("response.output_text.delta", **where, delta=text, logprobs=[]))
        elif isinstance(item, ReasoningItem):
            item.content[0].text += text
            out.append(self.event("response.reasoning_text.delta", **where, delta=text))
        return out

    def _open_text(self, kind: str) -> list[Event]:
        index = len(self.response.output)
        item: OutputMessage | ReasoningItem
        if kind == "message":
            item = OutputMessage(id=new_item_id("msg"), status="in_progress", content=[])
        else:
            item = ReasoningItem(id=new_item_id("rs"))
        self.response.output.append(item)
        self._text = (kind, index)
        added = self.event(
            "response.output_item.added", output_index=index, item=item.model_dump(mode="json")
        )
        part: OutputText | ReasoningPart
        if isinstance(item, OutputMessage):
            part = OutputText(text="")
            item.content.append(part)
        else:
            part = ReasoningPart(text="")
            item.content.append(part)
        where = {"item_id": item.id, "output_index": index, "content_index": 0}
        return [
            added,
            self.event("response.content_part.added", **where, part=part.model_dump(mode="json")),
        ]

    def _call(self, call: cf.ToolCallDelta) -> list[Event]:
        out: list[Event] = []
        index = self._calls.get(call.index)
        if index is None and call.index in self._closed_calls:
            # a piece of a call already closed (not expected: calls come one after another)
            closed = self.response.output[self._closed_calls[call.index]]
            assert isinstance(closed, FunctionCallItem)
            closed.arguments += call.arguments
            return out
        if index is None:
            if self._text is not None:
                out += self._close_text("completed")
            index = len(self.response.output)
            item = FunctionCallItem(
                id=new_item_id("fc"),
                call_id=call.id or new_item_id("call"),
                name=call.name or "",
                arguments="",
                status="in_progress",
            )
            self.response.output.append(item)
            self._calls[call.index] = index
            out.append(
                self.event(
                    "response.output_item.added",
                    output_index=index,
                    item=item.model_dump(mode="json"),
                )
            )
        item = self.response.output[index]  # type: ignore[assignment]
        assert isinstance(item, FunctionCallItem)
        if call.arguments:
            item.arguments += call.arguments
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=index,
                    delta=call.arguments,
                )
            )
        return out

    def _close_text(self, status: Literal["completed", "incomplete"]) -> list[Event]:
        assert self._text is not None
        index = self._text[1]
        self._text = None
        item = self.response.output[index]
        where = {"item_id": item.id, "output_index": index, "content_index": 0}
        out: list[Event] = []
        if isinstance(item, OutputMessage):
            part: OutputText | ReasoningPart = item.content[0]
            item.status = status
            out.append(
                self.event("response.output_text.done", **where, text=part.text, logprobs=[])
            )
        else:
            assert isinstance(item, ReasoningItem)
            part = item.content[0]
            if self.seal:
                item.encrypted_content = seal_reasoning(part.text)
            out.append(self.event("response.reasoning_text.done", **where, text=part.text))
        out.append(
            self.event("response.content_part.done", **where, part=part.model_dump(mode="json"))
        )
        out.append(
            self.event(
                "response.output_item.done", output_index=index, item=item.model_dump(mode="json")
            )
        )
        return out

    def _close_all(self, status: Literal["completed", "incomplete"]) -> list[Event]:
        out: list[Event] = []
        if self._text is not None:
            out += self._close_text(status)
        for call_index, index in sorted(self._calls.items(), key=lambda kv: kv[1]):
            item = self.response.output[index]
            assert isinstance(item, FunctionCallItem)
            item.status = status
            where = {"item_id": item.id, "output_index": index}
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item.name,
                    arguments=item.arguments,
                )
            )
            out.append(
                self.event(
                    "response.output_item.done",
                    output_index=index,
                    item=item.model_dump(mode="json"),
                )
            )
            self._closed_calls[call_index] = index
        self._calls.clear()
        return out

    def finish(self, answer: ChatAnswer, usage: ChatUsage) -> list[Event]:
        """The closing events: ``response.completed``, or ``response.incomplete`` when the
        output hit ``max_output_tokens`` (or the end of the context)."""
        cut = answer.finish_reason == "length"
        out = self._close_all("incomplete" if cut else "completed")
        answered = any(not isinstance(i, ReasoningItem) for i in self.response.output)
        if not cut and not answered:  # nothing said: still one (empty) message
            out += self._open_text("message") + self._close_text("completed")
        r = self.response
        r.status = "incomplete" if cut else "completed"
        r.incomplete_details = IncompleteDetails(reason="max_output_tokens") if cut else None
        r.usage = ResponseUsage.model_validate(
            {
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {
                    "cached_tokens": usage.cached_tokens,
                    "cache_write_tokens": usage.prompt_tokens - usage.cached_tokens,
                },
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
        )
        r.completed_at = int(time.time())
        out.append(self._whole("response.incomplete" if cut else "response.completed"))
        return out

    def fail(self, exc: BaseException) -> list[Event]:
        """The events of a response that failed mid-way: open items end ``incomplete``, then
        ``response.failed`` with the error."""
        out = self._close_all("incomplete")
        spec = error_spec(exc)
        message = error_payload(exc)["error"]["message"]
        self.response.status = "failed"
        code = "server_error" if spec.status >= 500 else (spec.code or spec.type)
        self.response.error = ResponseError(code=code, message=message)
        out.append(self._whole("response.failed"))
        return out

    def cancel(self) -> None:
        """Stop where it is: open items end ``incomplete`` (no events: nobody waits for them)."""
        self._close_all("incomplete")
        self.response.status = "cancelled"


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
