"""NDJSON streaming as Ollama does it, and the measured durations of its final chunk."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import StreamingResponse

from ggufworker.engine.types import TokenEvent
from ggufworker.errors import error_spec

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
NS = 1_000_000_000


def ollama_error_line(exc: BaseException) -> dict[str, Any]:
    """Ollama's error object for an exception (internal errors keep their details in the log)."""
    known = error_spec(exc).code != "internal_error"
    return {"error": str(exc) if known else "internal server error"}


async def _guarded(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """NDJSON lines; a failure mid-stream becomes an ``{"error": ...}`` line."""
    try:
        async for chunk in chunks:
            yield json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    except Exception as exc:
        if error_spec(exc).code == "internal_error":
            logger.exception("stream failed")
        else:
            logger.warning("stream failed: %s", exc)
        yield json.dumps(ollama_error_line(exc)).encode() + b"\n"


def ndjson_response(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """A streaming NDJSON response with Ollama's mid-stream error lines."""
    return StreamingResponse(
        _guarded(chunks), media_type=NDJSON, headers={"X-Accel-Buffering": "no"}
    )


@dataclass
class Timings:
    """Measured phases of one request, reported in nanoseconds as Ollama does."""

    started: float = field(default_factory=time.perf_counter)
    load: float = 0.0
    submitted: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    prompt_tokens: int = 0
    tokens: int = 0

    def see(self, event: TokenEvent) -> None:
        now = time.perf_counter()
        if event.token_id is not None:
            if self.first_token is None:
                self.first_token = now
            self.last_token = now
        if event.usage is not None:
            self.prompt_tokens = event.usage.prompt_tokens
            self.tokens = event.usage.completion_tokens

    def report(self) -> dict[str, Any]:
        end = time.perf_counter()
        submitted = self.submitted if self.submitted is not None else end
        first = self.first_token if self.first_token is not None else end
        last = self.last_token if self.last_token is not None else first
        return {
            "total_duration": int((end - self.started) * NS),
            "load_duration": int(self.load * NS),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": int(max(0.0, first - submitted) * NS),
            "eval_count": self.tokens,
            "eval_duration": int(max(0.0, last - first) * NS),
        }
