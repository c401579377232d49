"""Pieces every API surface's request types share: a lenient base model, ids, stop strings."""

from __future__ import annotations

import logging
import uuid

from pydantic import BaseModel, ConfigDict, model_validator

logger = logging.getLogger(__name__)


class LenientModel(BaseModel):
    """Base of every request type: unknown fields are accepted and logged, never an error."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_ignored(self) -> LenientModel:
        if self.model_extra:
            logger.info(
                "%s: ignoring unsupported fields %s",
                type(self).__name__,
                sorted(self.model_extra),
            )
        return self


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """The request's stop strings as a tuple, empty ones dropped."""
    stops = [stop] if isinstance(stop, str) else stop or []
    return tuple(s for s in stops if s)
