"""Request and response types of the OpenAI-compatible API (pydantic v2).

Fields follow OpenAI's order; our extensions sit in a marked block at the end of each request.
Every request accepts unknown fields (clients send many) and logs the ones it ignores.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from ggufworker.engine.types import SamplingParams
from ggufworker.errors import InvalidRequestError
from ggufworker.server.core.chat import ChatRequest
from ggufworker.server.core.protocol import LenientModel, stop_strings

logger = logging.getLogger(__name__)

MAX_STOP = 16
MAX_N = 16


def _limit_stop(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list) and len(value) > MAX_STOP:
        raise ValueError(f"at most {MAX_STOP} stop strings are allowed")
    return value


#: a request's ``stop``: one string or up to MAX_STOP of them
Stop = Annotated[str | list[str] | None, AfterValidator(_limit_stop)]


class OpenAIBaseModel(LenientModel):
    """Base of every OpenAI request: unknown fields are accepted and logged, never an error."""


# --- shared pieces -------------------------------------------------------------------------


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class JsonSchemaSpec(OpenAIBaseModel):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is 'json_schema'")
        return self


class LoraRef(OpenAIBaseModel):
    """One adapter of a request's ``lora`` list (llama-server's shape)."""

    id: int | None = Field(default=None, ge=0, description="adapter id (GET /lora-adapters)")
    name: str | None = Field(default=None, description="adapter name (instead of id)")
    scale: float = Field(default=1.0, ge=-100.0, le=100.0, description="0 leaves it out")

    @model_validator(mode="after")
    def _named(self) -> LoraRef:
        if (self.id is None) == (self.name is None):
            raise ValueError("each lora entry needs exactly one of id or name")
        return self


class SamplingFields(OpenAIBaseModel):
    """Sampling fields shared by chat and completions, in OpenAI's order."""

    model: str | None = Field(
        default=None, description="served model name (default: the first one)"
    )
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(
        default=None, description="token id -> bias (-100..100)"
    )
    n: int = Field(default=1, ge=1, le=MAX_N, description="choices to generate")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, description="sampling seed, for reproducible output")
    stop: Stop = Field(default=None, description=f"up to {MAX_STOP} stop strings")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = None

    # --- extensions (llama.cpp samplers) -------------------------------------------------------
    top_k: int | None = Field(default=None, ge=0, description="top-k sampling (0: off)")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, description="min-p sampling")
    repeat_penalty: float | None = Field(
        default=None, ge=0.0, le=10.0, description="repetition penalty"
    )
    grammar: str | None = Field(default=None, description="GBNF grammar constraining the output")
    ignore_eos: bool = Field(default=False, description="keep generating past end-of-sequence")
    speculative: bool = Field(
        default=True,
        description="verify draft tokens when the server speculates (--spec-type); false "
        "turns speculation off for this request",
    )
    # --- extensions (LoRA adapters, as llama-server's per-request field) ---
    lora: list[LoraRef] | None = Field(
        default=None,
        max_length=64,
        description="LoRA adapters to run under: [{id | name, scale}]; [] is the base alone "
        "(default: the model id's adapter, else the global scales of /lora-adapters)",
    )

    def lora_set(self) -> tuple[tuple[str | int, float], ...] | None:
        """The engine's adapter list for this request (None: not given)."""
        if self.lora is None:
            return None
        return tuple((r.id if r.id is not None else str(r.name), r.scale) for r in self.lora)

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError("logit_bias values must be between -100 and 100")
        return value

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _sampling(
        self, *, max_tokens: int | None, logprobs: int | None, json_schema: Any
    ) -> SamplingParams:
        defaults = SamplingParams()
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            min_p=defaults.min_p if self.min_p is None else self.min_p,
            repeat_penalty=defaults.repeat_penalty
            if self.repeat_penalty is None
            else self.repeat_penalty,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=self.seed,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            stop=stop_strings(self.stop),
            grammar=self.grammar,
            json_schema=json_schema,
            logprobs=logprobs,
            ignore_eos=self.ignore_eos,
            speculative=self.speculative,
        )


# --- chat ----------------------------------------------------------------------------------


#: OpenAI's media content parts -> the chat pipeline's part types
_MEDIA_PARTS = {"image_url": "image", "input_audio": "audio"}


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def to_template(self) -> dict[str, Any]:
        """The message as the chat pipeline takes it: text parts joined; image and audio parts
        passed on as media parts (the pipeline answers a model that cannot take them with a
        400 naming the model)."""
        content: Any = self.content
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind in _MEDIA_PARTS:
                    parts.append({**part, "type": _MEDIA_PARTS[kind]})
                else:
                    raise InvalidRequestError(
                        f"content part type {kind!r} is not supported", param="messages"
                    )
            media = any(p["type"] != "text" for p in parts)
            content = parts if media else "".join(p["text"] for p in parts)
        role = "system" if self.role == "developer" else self.role
        out: dict[str, Any] = {"role": role, "content": content or ""}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    logprobs: bool = False
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(
        None, ge=1, description="deprecated alias of max_completion_tokens"
    )
    parallel_tool_calls: bool | None = Field(
        default=None,
        description="allow several calls in one answer (default: true for auto, one call "
        "when tool_choice forces a call)",
    )
    response_format: ResponseFormat | None = None
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description="none | auto | required | {type: function, function: {name}}"
    )
    tools: list[dict[str, Any]] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    # --- extensions (reasoning, templates) -----------------------------------------------------
    reasoning_format: Literal["none", "auto"] | None = Field(
        default=None,
        description="auto: thinking goes to reasoning_content; none: it stays in content "
        "(default: the server's --reasoning-format)",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description='extra chat-template variables, e.g. {"enable_thinking": false}'
    )
    reasoning_budget: int | None = Field(
        default=None,
        ge=0,
        description="most thinking tokens; then the block is closed and the answer follows",
    )

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.to_template() for m in self.messages]

    def to_chat_request(self, *, reasoning_format: str = "auto") -> ChatRequest:
        """The request as the chat pipeline takes it (``reasoning_format``: the server's
        default when the request sets none)."""
        return ChatRequest(
            messages=self.template_messages(),
            params=self.to_sampling_params(),
            model=self.model,
            tools=self.tools,
            tool_choice=self.tool_choice,
            parallel_tool_calls=self.parallel_tool_calls,
            split_thinking=(self.reasoning_format or reasoning_format) == "auto",
            template_kwargs=self.chat_template_kwargs,
            reasoning_budget=self.reasoning_budget,
            n=self.n,
            lora=self.lora_set(),
        )

    def to_sampling_params(self) -> SamplingParams:
        """Map the request to the engine's sampling settings."""
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        schema: Any = None
        if self.response_format is not None:
            if self.response_format.type == "json_object":
                schema = {"type": "object"}
            elif self.response_format.type == "json_schema":
                assert self.response_format.json_schema is not None
                schema = self.response_format.json_schema.schema_ or {"type": "object"}
        if schema is not None and self.grammar:
            raise InvalidRequestError(
                "give either grammar or response_format, not both", param="grammar"
            )
        max_tokens = self.max_completion_tokens or self.max_tokens
        return self._sampling(max_tokens=max_tokens, logprobs=logprobs, json_schema=schema)


# --- completions ---------------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(...)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=16, ge=1)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        return value

    def prompts(self) -> list[str | list[int]]:
        """The prompts of this request (a list of strings or token lists is a batch)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def to_sampling_params(self) -> SamplingParams:
        """Map the request to the engine's sampling settings."""
        if self.suffix:
            raise InvalidRequestError(
                "suffix (fill-in-the-middle) is not supported", param="suffix"
            )
        return self._sampling(max_tokens=self.max_tokens, logprobs=self.logprobs, json_schema=None)


# --- embeddings, tokenize ------------------------------------------------------------------


class EmbeddingRequest(OpenAIBaseModel):
    input: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="a text, texts, token ids, or lists of token ids"
    )
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        default=None, ge=1, description="keep the first N values (Matryoshka), renormalised"
    )
    user: str | None = None
    # --- ggufworker extensions ---
    truncate: bool = Field(
        default=False,
        description="cut inputs longer than the model takes instead of answering 400",
    )

    def inputs(self) -> list[str | list[int]]:
        """The inputs, each a text or a list of token ids.

        Raises:
            InvalidRequestError: no input.
        """
        raw = self.input
        items: list[str | list[int]]
        if isinstance(raw, str):
            items = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            items = [[x for x in raw if isinstance(x, int)]]
        else:
            items = [x for x in raw if not isinstance(x, int)]
        if not items:
            raise InvalidRequestError("input must not be empty", param="input")
        return items


class TokenizeRequest(OpenAIBaseModel):
    content: str = Field(..., description="text to tokenize")
    model: str | None = None
    add_special: bool = Field(default=False, description="add BOS/EOS as the model wants")
    parse_special: bool = Field(
        default=True, description="parse special-token text as special tokens"
    )
    with_pieces: bool = Field(default=False, description="return each token's text too")


class DetokenizeRequest(OpenAIBaseModel):
    tokens: list[int] = Field(...)
    model: str | None = None


# --- responses -----------------------------------------------------------------------------


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, int] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "ggufworker"
    # --- extensions ---
    capabilities: list[str] = Field(default_factory=list)  # "completion" and/or "embedding"
    loaded: bool = False
    pinned: bool = False
    meta: dict[str, Any] | None = None
    # vLLM's LoRA fields: an adapter is a model whose parent is its base
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)
