"""Request and response types of the Ollama API (``/api/*``), pydantic v2.

Fields follow Ollama's ``api/types.go`` order; our extensions sit in a marked block. Requests
accept unknown fields and log them, like the OpenAI types. ``options`` is a free mapping in
Ollama: :func:`sampling_params` maps the keys we apply and logs the rest.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ggufworker.engine.types import SamplingParams
from ggufworker.errors import InvalidRequestError

logger = logging.getLogger(__name__)

# Ollama's sampling defaults (docs/modelfile.md), so a client sees the behaviour it expects
OLLAMA_DEFAULTS = SamplingParams(
    max_tokens=None,
    temperature=0.8,
    top_k=40,
    top_p=0.9,
    min_p=0.0,
    repeat_penalty=1.1,
    repeat_last_n=64,
)
# settings of the server, not of a request (flags of `ggufworker serve`)
LOAD_TIME_OPTIONS = frozenset(
    {
        "numa",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "embedding_only",
        "num_thread",
    }
)
_FLOAT_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
_INT_OPTIONS = {"top_k": "top_k", "repeat_last_n": "repeat_last_n"}
# applied elsewhere: num_predict, seed, stop (here), num_ctx (by the serving layer),
# and our extensions ignore_eos and tool_choice
_OTHER_OPTIONS = frozenset({"num_predict", "seed", "stop", "num_ctx", "ignore_eos", "tool_choice"})

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_keep_alive(value: float | str | None) -> float | None:
    """``keep_alive`` in seconds: a number of seconds or a Go duration (``"5m"``, ``"1h30m"``,
    ``"-1"``); negative means forever, 0 unload now; None when not given.

    Raises:
        InvalidRequestError: not a number or duration.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequestError("keep_alive must be a duration or seconds", param="keep_alive")
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _DURATION_PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise InvalidRequestError(
            f"keep_alive {value!r} is not a duration (e.g. '5m', '1h30m', '-1')",
            param="keep_alive",
        )
    return sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def format_schema(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema ``format`` asks for: ``"json"`` is any JSON object."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "object"}
    if isinstance(fmt, dict):
        return fmt
    raise InvalidRequestError(
        f"format must be 'json' or a JSON schema, got {fmt!r}", param="format"
    )


def sampling_params(
    options: dict[str, Any] | None, *, json_schema: dict[str, Any] | None = None
) -> SamplingParams:
    """Map Ollama ``options`` onto the engine's sampling settings.

    Load-time keys (``num_gpu``, ``num_thread``, ...) are server settings and unknown keys are
    ignored; both are logged, as Ollama does. ``num_predict`` -1 or -2 (and absent) generate
    until the end of the sequence or the context.

    Raises:
        InvalidRequestError: a value of the wrong type or out of range.
    """
    opts = dict(options or {})
    values: dict[str, Any] = {}
    for key, field_name in _FLOAT_OPTIONS.items():
        if opts.get(key) is not None:
            values[field_name] = _number(opts[key], key, float)
    for key, field_name in _INT_OPTIONS.items():
        if opts.get(key) is not None:
            values[field_name] = _number(opts[key], key, int)
    n = opts.get("num_predict")
    if n is not None:
        n = _number(n, "num_predict", int)
        if n == 0:
            raise InvalidRequestError("options.num_predict must be positive, -1 or -2")
        values["max_tokens"] = n if n > 0 else None
    seed = opts.get("seed")
    if seed is not None:
        seed = _number(seed, "seed", int)
        values["seed"] = seed if seed >= 0 else None
    stop = opts.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequestError("options.stop must be a string or a list of strings")
        values["stop"] = tuple(s for s in stops if s)
    if opts.get("ignore_eos") is not None:
        values["ignore_eos"] = bool(opts["ignore_eos"])
    for key in ("temperature", "top_p", "min_p", "repeat_penalty", "top_k"):
        if key in values and values[key] < 0:
            raise InvalidRequestError(f"options.{key} must not be negative")
    ignored = sorted(set(opts) - set(_FLOAT_OPTIONS) - set(_INT_OPTIONS) - _OTHER_OPTIONS)
    if ignored:
        load_time = [k for k in ignored if k in LOAD_TIME_OPTIONS]
        unknown = [k for k in ignored if k not in LOAD_TIME_OPTIONS]
        if load_time:
            logger.info("options: %s are server settings, not applied per request", load_time)
        if unknown:
            logger.warning("options: ignoring unsupported keys %s", unknown)
    return replace(OLLAMA_DEFAULTS, **values, json_schema=json_schema)


def _number(value: Any, key: str, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"options.{key} must be a number, got {value!r}")
    if kind is int and float(value) != int(value):
        raise InvalidRequestError(f"options.{key} must be an integer, got {value!r}")
    return kind(value)


class OllamaBaseModel(BaseModel):
    """Base of every request: unknown fields are accepted and logged, never an error."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _name_is_model(cls, data: Any) -> Any:
        # older clients send `name` where newer ones send `model`
        if isinstance(data, dict) and "model" in cls.model_fields and "model" not in data:
            if "name" in data:
                data = {**data, "model": data["name"]}
                del data["name"]
        return data

    @model_validator(mode="after")
    def _log_ignored(self) -> OllamaBaseModel:
        if self.model_extra:
            logger.info(
                "%s: ignoring unsupported fields %s", type(self).__name__, sorted(self.model_extra)
            )
        return self


Format = str | dict[str, Any] | None
KeepAlive = float | str | None
Think = bool | Literal["low", "medium", "high"] | None


class ToolCallFunction(BaseModel):
    index: int | None = None
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(BaseModel):
    id: str | None = None
    function: ToolCallFunction


class ChatMessage(OllamaBaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates expect it (OpenAI/HF shape)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            out["tool_calls"] = [
                {
                    "type": "function",
                    **({"id": c.id} if c.id else {}),
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in self.tool_calls
            ]
        if self.tool_name:
            out["name"] = self.tool_name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.thinking and self.role == "assistant":
            out["reasoning_content"] = self.thinking
        return out


class GenerationFields(OllamaBaseModel):
    """What /api/chat and /api/generate share."""

    model: str = Field(..., min_length=1, description="model name (registry, name:tag, stem)")
    format: Format = Field(default=None, description="'json' or a JSON schema")
    options: dict[str, Any] | None = Field(
        default=None, description="sampling options (num_predict, temperature, top_k, ...)"
    )
    stream: bool = Field(default=True, description="NDJSON chunks (false: one object)")
    keep_alive: KeepAlive = Field(
        default=None, description="'5m', seconds, 0 (unload after), negative (keep loaded)"
    )
    think: Think = Field(default=None, description="separate the model's reasoning")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def keep_alive_s(self) -> float | None:
        return parse_keep_alive(self.keep_alive)

    def to_sampling_params(self) -> SamplingParams:
        """Map ``options`` and ``format`` to the engine's sampling settings."""
        if self.logprobs:
            logger.info("logprobs are not returned by the Ollama API here (use /v1)")
        return sampling_params(self.options, json_schema=format_schema(self.format))

    def num_ctx(self) -> int | None:
        value = (self.options or {}).get("num_ctx")
        if value is None:
            return None
        n = _number(value, "num_ctx", int)
        if n < 1:
            raise InvalidRequestError("options.num_ctx must be positive")
        return int(n)


class ChatRequest(GenerationFields):
    messages: list[ChatMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    # --- extensions ------------------------------------------------------------------------
    tool_choice: str | dict[str, Any] | None = Field(
        default=None,
        description="'auto', 'none', 'required' or {'type': 'function', 'function': {'name'}}; "
        "also read from options.tool_choice (the official client sends only options)",
    )

    def effective_tool_choice(self) -> str | dict[str, Any] | None:
        return self.tool_choice or (self.options or {}).get("tool_choice")


class GenerateRequest(GenerationFields):
    prompt: str = ""
    suffix: str | None = Field(default=None, description="fill-in-the-middle: text after")
    system: str | None = None
    template: str | None = None
    context: list[int] | None = Field(default=None, description="deprecated: earlier tokens")
    raw: bool = Field(default=False, description="send the prompt with no chat template")
    images: list[str] | None = None


class EmbedRequest(OllamaBaseModel):
    model: str = Field(..., min_length=1)
    input: str | list[str] = Field(...)
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not texts:
            raise InvalidRequestError("input must not be empty", param="input")
        return texts


class EmbeddingsRequest(OllamaBaseModel):
    """The legacy /api/embeddings: one prompt, one vector."""

    model: str = Field(..., min_length=1)
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class ModelRequest(OllamaBaseModel):
    """/api/show, /api/delete: one model by name."""

    model: str = Field(..., min_length=1)
    verbose: bool = False


class PullRequest(OllamaBaseModel):
    model: str = Field(..., min_length=1, description="registry name, name:tag or hf:// ref")
    insecure: bool = False
    stream: bool = True


class CopyRequest(OllamaBaseModel):
    source: str = Field(..., min_length=1)
    destination: str = Field(..., min_length=1)


# --- responses -------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    error: str


class VersionResponse(BaseModel):
    version: str


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str = "gguf"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class ListModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class ListResponse(BaseModel):
    models: list[ListModel]


class ProcessModel(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class ProcessResponse(BaseModel):
    models: list[ProcessModel]


class ShowResponse(BaseModel):
    license: str = ""
    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    system: str = ""
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class StatusResponse(BaseModel):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
