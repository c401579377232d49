"""ggufworker's inference engine: llama.cpp with continuous batching.

This package is the only part of ggufworker that imports ``llama_cpp``. Importing
``ggufworker.engine`` loads llama.cpp; import ``ggufworker.engine.types`` alone for the data
types without it.
"""

from ggufworker.engine.engine import Engine
from ggufworker.engine.handle import Completion, EngineStats, RequestHandle
from ggufworker.engine.types import (
    FinishReason,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
    TokenEvent,
    TopLogprob,
    Usage,
)

__all__ = [
    "Completion",
    "Engine",
    "EngineStats",
    "FinishReason",
    "GenerationRequest",
    "ModelInfo",
    "RequestHandle",
    "SamplingParams",
    "TokenEvent",
    "TopLogprob",
    "Usage",
]
