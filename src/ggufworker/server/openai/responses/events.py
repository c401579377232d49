"""The events of one response: :class:`ResponseBuilder` builds a response from the chat
pipeline's deltas and the server-sent events that tell it, the same for a plain request, a
stream and a background run."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from ggufworker import chat_formats as cf
from ggufworker.errors import error_spec
from ggufworker.server.core.chat import (
    ChatAnswer,
    ChatUsage,
)
from ggufworker.server.core.sse import error_payload
from ggufworker.server.openai.responses.objects import (
    FunctionCallItem,
    IncompleteDetails,
    OutputMessage,
    OutputText,
    ReasoningItem,
    ReasoningPart,
    ResponseError,
    ResponseObject,
    ResponseUsage,
    new_item_id,
    seal_reasoning,
)

Event = dict[str, Any]


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
