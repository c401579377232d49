"""The worker API of the system this project grew from.

``POST /execute`` runs one job and streams worker events over SSE::

    {"type": "started", "job_id": ..., "model": ...}
    {"type": "token", "t": "<text>", "i": <index>}          one per generated token
    {"type": "end", "tokens_out": ..., "decode_time_ms": ..., "stop_reason": ...}
    {"type": "error", "message": ..., "code": ...}          instead of "end" on failure

``--worker-id ID --callback-url URL`` announces the worker to a controller once a model is ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ggufworker.engine.types import GenerationRequest
from ggufworker.errors import error_spec
from ggufworker.server.core.generation import Generation, start_generation
from ggufworker.server.core.metrics import Metrics
from ggufworker.server.core.models import ModelManager, ServedModel
from ggufworker.server.core.sse import error_payload, sse_event
from ggufworker.server.worker.protocol import ExecuteRequest

logger = logging.getLogger(__name__)


async def execute_events(
    body: ExecuteRequest, manager: ModelManager, metrics: Metrics
) -> AsyncIterator[bytes]:
    """Submit the job (errors before the stream raise, so they get an HTTP status), then
    return its worker-event stream."""
    generation = await start_generation(
        manager,
        metrics,
        body.model,
        lambda _: [
            GenerationRequest(
                prompt=body.prompt,
                params=body.to_sampling_params(),
                request_id=f"{body.job_id}-{uuid.uuid4().hex[:8]}",
            )
        ],
    )
    return _execute_stream(body, generation)


async def _execute_stream(body: ExecuteRequest, generation: Generation) -> AsyncIterator[bytes]:
    job = body.job_id
    first: float | None = None
    count = 0
    try:
        yield sse_event(
            {
                "type": "started",
                "job_id": job,
                "model": generation.lease.name,
                "prompt_tokens": generation.handles[0].prompt_tokens,
            }
        )
        async for _, event in generation.events():
            if event.token_id is not None:
                if first is None:
                    first = time.perf_counter()
                yield sse_event({"type": "token", "t": event.text, "i": count})
                count += 1
            elif event.text:
                # text held back by the detokenizer, released at the end
                yield sse_event({"type": "token", "t": event.text, "i": count})
            if event.finish_reason is not None:
                choice = generation.choices[0]
                decode_ms = (time.perf_counter() - first) * 1000 if first is not None else 0.0
                yield sse_event(
                    {
                        "type": "end",
                        "job_id": job,
                        "tokens_in": choice.prompt_tokens,
                        "tokens_out": choice.tokens,
                        "decode_time_ms": round(decode_ms, 3),
                        "stop_reason": event.finish_reason,
                    }
                )
    except Exception as exc:
        err = error_payload(exc)["error"]
        if error_spec(exc).code == "internal_error":
            logger.exception("job %s failed", job)
        yield sse_event(
            {"type": "error", "job_id": job, "message": err["message"], "code": err["code"]}
        )
    finally:
        generation.close()


class ReadinessCallback:
    """POSTs ``{worker_id, url, model, backend, slots}`` once per loaded model, with retries
    and exponential backoff; failures are logged and never stop the server."""

    def __init__(
        self,
        url: str,
        worker_id: str,
        base_url: str,
        *,
        attempts: int = 8,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
    ) -> None:
        self.url = url
        self.worker_id = worker_id
        self.base_url = base_url
        self.attempts = attempts
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._tasks: set[asyncio.Task[Any]] = set()
        self._announced: set[str] = set()

    def payload(self, model: ServedModel) -> dict[str, Any]:
        info = getattr(model.engine, "info", None)
        stats = model.engine.stats()
        return {
            "worker_id": self.worker_id,
            "url": self.base_url,
            "model": model.spec.name,
            "backend": getattr(info, "backend", "unknown"),
            "slots": stats.n_parallel,
        }

    def on_ready(self, model: ServedModel) -> None:
        """Model-manager hook: announce a model the first time it is ready."""
        if model.spec.name in self._announced:
            return
        self._announced.add(model.spec.name)
        task = asyncio.get_running_loop().create_task(self._post(self.payload(model)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, payload: dict[str, Any]) -> bool:
        delay = self.first_delay
        async with httpx.AsyncClient(timeout=10.0) as client:
            for attempt in range(1, self.attempts + 1):
                try:
                    response = await client.post(self.url, json=payload)
                    if response.status_code < 400:
                        logger.info(
                            "readiness callback to %s accepted (%s)", self.url, payload["model"]
                        )
                        return True
                    logger.warning(
                        "readiness callback got HTTP %s (try %d/%d)",
                        response.status_code,
                        attempt,
                        self.attempts,
                    )
                except httpx.HTTPError as exc:
                    logger.warning(
                        "readiness callback failed: %s (try %d/%d)", exc, attempt, self.attempts
                    )
                if attempt < self.attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_delay)
        logger.error("readiness callback to %s gave up after %d tries", self.url, self.attempts)
        return False

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
