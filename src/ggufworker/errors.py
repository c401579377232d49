"""Typed exceptions and the one table that maps them to HTTP status and OpenAI error types.

Classify errors by type, never by matching message text.
"""

from __future__ import annotations

from dataclasses import dataclass


class GGUFWorkerError(Exception):
    """Base class of every error ggufworker raises on purpose."""

    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        if param is not None:
            self.param = param


# --- registry / downloads -------------------------------------------------------------------


class RegistryError(GGUFWorkerError):
    """models.yaml is unreadable or does not match the schema."""


class ModelNotFoundError(GGUFWorkerError, LookupError):
    """A model name is in neither the registry, the cache, nor the served set."""

    param = "model"


class WrongModelKindError(ModelNotFoundError):
    """A served model asked for what it does not do: chat from an embedding model, embeddings
    from a generation model (a 400 that says so; callers that fall back from one kind to the
    other still catch it as :class:`ModelNotFoundError`)."""


class ChecksumMismatchError(GGUFWorkerError):
    """A downloaded file's sha256 is not the one the registry pins."""


class DownloadError(GGUFWorkerError):
    """Every source of a model failed (network down, 404, ...)."""


class OfflineError(DownloadError):
    """Offline mode was asked for and the file is not in the cache."""


class DiskFullError(GGUFWorkerError, OSError):
    """Not enough free space to write a file."""


# --- engine ---------------------------------------------------------------------------------


class ModelLoadError(GGUFWorkerError):
    """llama.cpp could not load a GGUF file."""


class ResponseNotFoundError(GGUFWorkerError, LookupError):
    """No stored (or running) Responses API response has this id."""

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Response with id {response_id!r} not found.")


class InvalidRequestError(GGUFWorkerError, ValueError):
    """A request's parameters are invalid (bad grammar, bad sampling value, ...)."""


class ContextLengthExceededError(InvalidRequestError):
    """The prompt (plus what must be generated) does not fit the context window."""

    param = "messages"


class QueueFullError(GGUFWorkerError):
    """All slots are busy and the waiting queue is full."""


class EngineClosedError(GGUFWorkerError):
    """The engine was shut down while a request was pending."""


class GenerationError(GGUFWorkerError):
    """A failure inside one sequence; the request ends, others keep running."""


class RpcWorkerUnavailableError(GGUFWorkerError):
    """A llama.cpp RPC worker that a split model needs does not answer: that model's requests
    fail (its message names the worker) until the worker is back and the model reloaded."""

    def __init__(self, message: str, *, workers: tuple[str, ...] = ()) -> None:
        super().__init__(message, param="model")
        self.workers = workers


# --- server ---------------------------------------------------------------------------------


class AuthenticationError(GGUFWorkerError):
    """Missing or wrong API key."""


class RequestTooLargeError(GGUFWorkerError):
    """The request body exceeds the configured limit."""


class ModelLoadingError(GGUFWorkerError):
    """The model is still loading; retry shortly."""


# --- converter ------------------------------------------------------------------------------


class ConversionError(GGUFWorkerError):
    """A SafeTensors checkpoint cannot be converted (unsupported arch, bad files, ...)."""


class UnsupportedArchitectureError(ConversionError):
    """config.json names an architecture the converter does not support."""


class VerificationError(ConversionError):
    """A converted file does not match its source."""


@dataclass(frozen=True)
class ErrorSpec:
    status: int
    type: str
    code: str | None


# Ordered: the first matching row wins, so subclasses come before their bases.
ERROR_TABLE: tuple[tuple[type[BaseException], ErrorSpec], ...] = (
    (
        ContextLengthExceededError,
        ErrorSpec(400, "invalid_request_error", "context_length_exceeded"),
    ),
    (InvalidRequestError, ErrorSpec(400, "invalid_request_error", None)),
    (WrongModelKindError, ErrorSpec(400, "invalid_request_error", "model_not_supported")),
    (ModelNotFoundError, ErrorSpec(404, "invalid_request_error", "model_not_found")),
    (ResponseNotFoundError, ErrorSpec(404, "invalid_request_error", "not_found")),
    (AuthenticationError, ErrorSpec(401, "invalid_request_error", "invalid_api_key")),
    (RequestTooLargeError, ErrorSpec(413, "invalid_request_error", "request_too_large")),
    (QueueFullError, ErrorSpec(429, "server_overloaded", "queue_full")),
    (ModelLoadingError, ErrorSpec(503, "server_error", "model_loading")),
    (EngineClosedError, ErrorSpec(503, "server_error", "engine_closed")),
    (RpcWorkerUnavailableError, ErrorSpec(503, "server_error", "rpc_worker_unavailable")),
    (ModelLoadError, ErrorSpec(500, "server_error", "model_unavailable")),
    (GGUFWorkerError, ErrorSpec(500, "server_error", None)),
)

_INTERNAL = ErrorSpec(500, "server_error", "internal_error")


def error_spec(exc: BaseException) -> ErrorSpec:
    """Return the HTTP status, OpenAI error type and code for an exception."""
    for exc_type, spec in ERROR_TABLE:
        if isinstance(exc, exc_type):
            return spec
    return _INTERNAL
