"""What a caller holds while a request runs: a stream of token events, sync or async.

The scheduler thread produces events; consumers read them from another thread or from an
asyncio loop. Events are buffered in a thread-safe queue until a consumer attaches; an async
consumer switches delivery to ``loop.call_soon_threadsafe`` into an ``asyncio.Queue``, so the
event loop is woken only when there is something to read.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from ggufworker.engine.types import TokenEvent, Usage
from ggufworker.errors import EngineClosedError

_END = object()  # stream ended without a final event (cancelled)


def deliver_many(items: list[tuple[RequestHandle, object]]) -> None:
    """Hand one step's events to their consumers: one loop wake-up per event loop, not per
    event (``call_soon_threadsafe`` writes to the loop's self-pipe each time)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
    for handle, item in items:
        target = handle._route(item)
        if target is not None:
            by_loop.setdefault(target[0], []).append((target[1], item))
    for loop, batch in by_loop.items():
        _call_soon(loop, _put_all, batch)


def _put_all(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for aq, item in batch:
        aq.put_nowait(item)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], arg: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, arg)
    except RuntimeError:  # the consumer's loop is closed: nobody listens any more
        pass


@dataclass
class Completion:
    """A finished generation (what :meth:`Engine.generate` returns)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage
    logprobs: list[TokenEvent] | None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load."""

    n_parallel: int
    busy_slots: int
    queue_depth: int
    max_queue: int
    total_prompt_tokens: int
    total_generated_tokens: int
    total_cached_tokens: int = 0
    total_requests: int = 0
    #: speculation (llama-server's spec_decode_* counters): verifications with drafts, draft
    #: tokens verified, draft tokens accepted, and accepted ones by draft position (from 1)
    spec_drafts: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    spec_accepted_per_pos: tuple[int, ...] = ()


class RequestHandle:
    """A submitted request: iterate it (``for`` or ``async for``) to get :class:`TokenEvent`s.

    The last event has ``finish_reason`` and ``usage``. A failure inside the sequence is raised
    from iteration as :class:`~ggufworker.errors.GenerationError`. Closing an ``async for``
    early (client gone) cancels the request; a blocking iterator does not (call :meth:`cancel`),
    so ``next(iter(handle))`` can peek without side effects. A cancelled stream just ends.
    """

    def __init__(self, request_id: str, prompt_tokens: int, cancel: Callable[[str], None]) -> None:
        self.id = request_id
        self.prompt_tokens = prompt_tokens
        self._cancel = cancel
        self._lock = threading.Lock()
        self._buffer: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aqueue: asyncio.Queue[object] | None = None
        self._done = False  # producer side: final item delivered
        self._consumed = False  # consumer side: saw the final item

    # --- producer side (scheduler thread) ----------------------------------------------------

    def _route(self, item: object) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None:
        """Record ``item``; buffer it, or return the (loop, queue) it must be handed to."""
        with self._lock:
            if self._done:
                return None
            if isinstance(item, BaseException) or item is _END:
                self._done = True
            elif isinstance(item, TokenEvent) and item.finish_reason is not None:
                self._done = True
            if self._loop is None:
                self._buffer.put(item)
                return None
            return self._loop, self._aqueue  # type: ignore[return-value]

    def _deliver(self, item: object) -> None:
        deliver_many([(self, item)])

    def _end(self) -> None:
        self._deliver(_END)

    # --- consumer side -----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the stream has delivered its last item."""
        return self._done

    def cancel(self) -> None:
        """Stop generating; the slot is freed within one scheduler step."""
        if not self._done:
            self._cancel(self.id)

    def _check(self, item: object) -> TokenEvent | None:
        if item is _END:
            self._consumed = True
            return None
        if isinstance(item, BaseException):
            self._consumed = True
            raise item
        assert isinstance(item, TokenEvent)
        if item.finish_reason is not None:
            self._consumed = True
        return item

    def __iter__(self) -> Iterator[TokenEvent]:
        while not self._consumed:
            event = self._check(self._buffer.get())
            if event is None:
                return
            yield event

    async def _aiter(self) -> AsyncIterator[TokenEvent]:
        aq: asyncio.Queue[object] = asyncio.Queue()
        with self._lock:
            if self._loop is not None:
                raise RuntimeError("a request stream can be consumed only once")
            while True:
                try:
                    aq.put_nowait(self._buffer.get_nowait())
                except queue.Empty:
                    break
            self._loop = asyncio.get_running_loop()
            self._aqueue = aq
        try:
            while not self._consumed:
                event = self._check(await aq.get())
                if event is None:
                    return
                yield event
        finally:
            if not self._consumed:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._aiter()

    def collect(self, *, logprobs: bool = False) -> Completion:
        """Iterate to the end and return the whole completion (blocking); ``logprobs`` keeps
        each token's event.

        Raises:
            EngineClosedError: the request was cancelled before it finished.
        """
        parts: list[str] = []
        ids: list[int] = []
        events: list[TokenEvent] = []
        final: TokenEvent | None = None
        for ev in self:
            parts.append(ev.text)
            if ev.token_id is not None:
                ids.append(ev.token_id)
                events.append(ev)
            if ev.finish_reason is not None:
                final = ev
        if final is None or final.usage is None:
            raise EngineClosedError("the request was cancelled before it finished")
        return Completion(
            text="".join(parts),
            token_ids=ids,
            finish_reason=str(final.finish_reason),
            usage=final.usage,
            logprobs=events if logprobs else None,
        )
