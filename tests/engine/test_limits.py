"""Limits and faults: cancellation, the bounded queue, context overflow, closing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ggufworker.engine import Engine, GenerationRequest, SamplingParams
from ggufworker.errors import ContextLengthExceededError, EngineClosedError, QueueFullError

LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
SHORT = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "pipelined"])
def one_slot(smollm2_path: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """One slot and room for one waiting request, so queueing is easy to provoke."""
    engine = Engine.load(smollm2_path, n_ctx=256, n_parallel=1, max_queue=1, pipeline=request.param)
    yield engine
    engine.close()


def _wait(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_cancel_frees_slot_for_queued_request(one_slot: Engine) -> None:
    running = one_slot.submit(GenerationRequest("Count: 1, 2, 3,", LONG))
    queued = one_slot.submit(GenerationRequest("Hello", SHORT))
    first = next(iter(running))  # the long request is generating
    assert first.token_id is not None
    stats = one_slot.stats()
    assert stats.busy_slots == 1 and stats.queue_depth == 1
    running.cancel()
    events = list(queued)  # the queued request now gets the slot and finishes
    assert events[-1].finish_reason == "length"
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == 4
    rest = list(running)  # the cancelled stream ends without a final event
    assert all(e.finish_reason is None for e in rest)
    _wait(lambda: one_slot.stats().busy_slots == 0)


def test_queue_full_raises_at_once(one_slot: Engine) -> None:
    running = one_slot.submit(GenerationRequest("Count: 1, 2, 3,", LONG))
    waiting = one_slot.submit(GenerationRequest("Hello", SHORT))
    t0 = time.monotonic()
    with pytest.raises(QueueFullError):
        one_slot.submit(GenerationRequest("Hi", SHORT))
    assert time.monotonic() - t0 < 1.0
    running.cancel()
    waiting.cancel()
    _wait(lambda: one_slot.stats().busy_slots == 0 and one_slot.stats().queue_depth == 0)
    # Capacity is back: a new request is accepted and completes.
    assert one_slot.generate(GenerationRequest("Hi", SHORT)).finish_reason == "length"


def test_context_overflow_rejected_before_work(one_slot: Engine) -> None:
    before = one_slot.stats()
    text = "word " * 400
    assert len(one_slot.tokenize(text)) >= one_slot.info.n_ctx
    with pytest.raises(ContextLengthExceededError):
        one_slot.submit(GenerationRequest(text, SHORT))
    after = one_slot.stats()
    assert after.total_requests == before.total_requests
    assert after.total_prompt_tokens == before.total_prompt_tokens


def test_context_end_finishes_with_length(one_slot: Engine) -> None:
    n_ctx = one_slot.info.n_ctx
    prompt = "one two three " * 75
    n_prompt = len(one_slot.tokenize(prompt))
    assert n_ctx - 40 < n_prompt < n_ctx - 10
    params = SamplingParams(temperature=0, max_tokens=None, ignore_eos=True)
    c = one_slot.generate(GenerationRequest(prompt, params))
    assert c.finish_reason == "length"
    assert n_prompt + c.usage.completion_tokens == n_ctx


def test_close_ends_pending_requests(smollm2_path: Path) -> None:
    engine = Engine.load(smollm2_path, n_ctx=512, n_parallel=1, max_queue=4)
    running = engine.submit(GenerationRequest("Count: 1, 2, 3,", LONG))
    queued = engine.submit(GenerationRequest("Hello", SHORT))
    next(iter(running))
    engine.close()
    with pytest.raises(EngineClosedError):
        list(queued)
    with pytest.raises(EngineClosedError):
        list(running)
    with pytest.raises(EngineClosedError):
        engine.submit(GenerationRequest("Hello", SHORT))


def test_run_on_scheduler_uses_the_engine_thread(one_slot: Engine) -> None:
    import threading

    assert one_slot.run_on_scheduler(threading.current_thread).name == "ggufworker-scheduler"
    with pytest.raises(ZeroDivisionError):
        one_slot.run_on_scheduler(lambda: 1 // 0)
    # The engine still serves after a failing call.
    assert one_slot.generate(GenerationRequest("Hi", SHORT)).finish_reason == "length"
