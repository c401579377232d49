"""The worker API's request type."""

from __future__ import annotations

from pydantic import Field

from ggufworker.engine.types import SamplingParams
from ggufworker.server.core.protocol import LenientModel, stop_strings


class ExecuteRequest(LenientModel):
    """The worker API's job: a raw-text prompt streamed back as worker events."""

    job_id: str = Field(..., min_length=1)
    prompt: str
    max_tokens: int | None = Field(default=256, ge=1)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    model: str | None = None

    def to_sampling_params(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=stop_strings(self.stop),
        )
