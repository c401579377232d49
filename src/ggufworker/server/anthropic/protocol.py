"""Request and response types of the Anthropic Messages API (pydantic v2), and the request's
translation into the chat pipeline's :class:`~ggufworker.server.core.chat.ChatRequest`.

Fields follow Anthropic's order. Every request type accepts unknown fields (clients send many:
``metadata``, ``service_tier``, ``container``, beta fields) and logs the ones it ignores;
``cache_control`` is accepted wherever Anthropic allows it and ignored (the server reuses cached
prompt prefixes by itself).

How content blocks become template messages (OpenAI's shape, which every template takes):

- ``system`` (a string or text blocks, joined by a blank line) is the first, ``system`` message;
- ``text`` blocks are the message's text; ``image`` blocks pass through as image parts (a model
  without a projector answers 400 naming itself); a ``document`` block with a plain-text source
  is text, any other document is a 400;
- an assistant's ``tool_use`` blocks are its ``tool_calls`` (``arguments`` as JSON text);
- a user's ``tool_result`` blocks are ``tool`` messages (``tool_call_id`` = ``tool_use_id``),
  in block order, before the text that follows them; ``is_error`` prefixes ``Error: ``;
- an assistant's ``thinking`` blocks are its ``reasoning_content`` (templates that show past
  reasoning, such as Qwen3's within a tool loop, render it; the others drop it);
  ``redacted_thinking`` is dropped (it holds nothing a local model can read).
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag

from ggufworker.engine.types import SamplingParams
from ggufworker.errors import InvalidRequestError
from ggufworker.server.core.chat import ChatRequest
from ggufworker.server.core.protocol import LenientModel, stop_strings

logger = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 64
#: Anthropic's default temperature (the other samplers keep the engine's defaults)
DEFAULT_TEMPERATURE = 1.0


class AnthropicBaseModel(LenientModel):
    """Base of every Anthropic request type: unknown fields are accepted and logged."""


class CacheControl(AnthropicBaseModel):
    """Accepted and ignored: prompt prefixes are reused from the KV cache without being asked."""

    type: str = "ephemeral"
    ttl: str | None = None


# --- content blocks ------------------------------------------------------------------------


class TextBlock(AnthropicBaseModel):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageBlock(AnthropicBaseModel):
    type: Literal["image"]
    source: dict[str, Any] = Field(description="base64, url or file source")
    cache_control: CacheControl | None = None


class DocumentBlock(AnthropicBaseModel):
    type: Literal["document"]
    source: dict[str, Any] = Field(description="only a plain-text source is supported")
    title: str | None = None
    context: str | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(AnthropicBaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    cache_control: CacheControl | None = None


ToolResultPart = Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]


class ToolResultBlock(AnthropicBaseModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ToolResultPart] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(AnthropicBaseModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(AnthropicBaseModel):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock,
    Field(discriminator="type"),
]


def _content_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "blocks"


# A string, or a list of blocks; only the matching shape is validated, so an error names the
# block at fault rather than also saying "not a string".
MessageContent = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[ContentBlock], Tag("blocks")],
    Discriminator(_content_kind),
]


class MessageParam(AnthropicBaseModel):
    role: Literal["user", "assistant"]
    content: MessageContent


# --- tools, tool_choice, thinking ----------------------------------------------------------


class Tool(AnthropicBaseModel):
    type: str | None = Field(
        default=None, description="custom (or absent); Anthropic's server tools are a 400"
    )
    name: str = Field(..., min_length=1)
    description: str | None = None
    input_schema: dict[str, Any] | None = Field(
        default=None, description="JSON schema of the tool's input (required for custom tools)"
    )
    cache_control: CacheControl | None = None


class ToolChoice(AnthropicBaseModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, description="the tool, for type 'tool'")
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(AnthropicBaseModel):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(
        default=None,
        ge=1,
        description="most thinking tokens (enabled); the block is then closed and the answer "
        "follows. Anthropic's minimum of 1024 is not enforced",
    )


class OutputFormat(AnthropicBaseModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(AnthropicBaseModel):
    effort: str | None = Field(default=None, description="accepted and ignored")
    format: OutputFormat | None = Field(
        default=None, description="a JSON schema the text answer follows (grammar-constrained)"
    )


# --- requests ------------------------------------------------------------------------------


class CountTokensRequest(AnthropicBaseModel):
    """``POST /v1/messages/count_tokens``: what ``POST /v1/messages`` would take as input."""

    model: str = Field(..., description="a served model name")
    messages: list[MessageParam] = Field(..., min_length=1)
    system: str | list[TextBlock] | None = None
    thinking: ThinkingConfig | None = None
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = None

    def to_sampling_params(self) -> SamplingParams:
        """Sampling settings: none matter for counting (the prompt does not depend on them)."""
        return SamplingParams()

    def to_chat_request(self) -> ChatRequest:
        """The request as the chat pipeline takes it.

        Raises:
            InvalidRequestError: content the pipeline cannot take (named by ``param``).
        """
        thinking = self.thinking
        template_kwargs = None
        budget = None
        if thinking is not None:
            template_kwargs = {"enable_thinking": thinking.type != "disabled"}
            if thinking.type == "enabled":
                budget = thinking.budget_tokens
        choice, parallel = self._tool_choice()
        return ChatRequest(
            messages=self._template_messages(),
            params=self.to_sampling_params(),
            model=self.model,
            tools=self._tools(),
            tool_choice=choice,
            parallel_tool_calls=parallel,
            split_thinking=True,
            template_kwargs=template_kwargs,
            reasoning_budget=budget,
        )

    def _template_messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        system = self.system
        if isinstance(system, list):
            system = "\n\n".join(b.text for b in system if b.text)
        if system:
            out.append({"role": "system", "content": system})
        for i, message in enumerate(self.messages):
            param = f"messages[{i}]"
            content = message.content
            if isinstance(content, str):
                out.append({"role": message.role, "content": content})
            elif message.role == "assistant":
                out.append(_assistant_message(content, param))
            else:
                out.extend(_user_messages(content, param))
        if self.messages[-1].role == "assistant":
            raise InvalidRequestError(
                "the last message must be a user message: prefilling the assistant's answer is "
                "not supported",
                param=f"messages[{len(self.messages) - 1}]",
            )
        return out

    def _tools(self) -> list[dict[str, Any]] | None:
        if not self.tools:
            return None
        out = []
        for i, tool in enumerate(self.tools):
            if tool.type not in (None, "custom"):
                raise InvalidRequestError(
                    f"tools[{i}]: tool type {tool.type!r} (an Anthropic server tool) is not "
                    "supported; give custom tools with an input_schema",
                    param=f"tools[{i}].type",
                )
            if tool.input_schema is None:
                raise InvalidRequestError(
                    f"tools[{i}].input_schema is required", param=f"tools[{i}].input_schema"
                )
            fn: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description:
                fn["description"] = tool.description
            out.append({"type": "function", "function": fn})
        return out

    def _tool_choice(self) -> tuple[str | dict[str, Any] | None, bool]:
        """OpenAI's ``tool_choice`` and ``parallel_tool_calls``.

        ``auto`` allows several calls unless ``disable_parallel_tool_use``; a forced choice
        (``any``, ``tool``) gives one call, which ends the turn (with several allowed, a small
        model can go on calling until ``max_tokens``)."""
        choice = self.tool_choice
        if choice is None:
            return None, True
        parallel = choice.type in ("auto", "none") and not choice.disable_parallel_tool_use
        if choice.type == "tool":
            if not choice.name:
                raise InvalidRequestError(
                    "tool_choice of type 'tool' needs a name", param="tool_choice.name"
                )
            return {"type": "function", "function": {"name": choice.name}}, parallel
        if not self.tools and choice.type in ("auto", "none"):
            return None, parallel  # no tools: nothing to choose from, nothing to refuse
        return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


class MessageCreateRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    max_tokens: int = Field(..., ge=1, description="most tokens to generate (thinking included)")
    metadata: dict[str, Any] | None = Field(default=None, description="accepted and ignored")
    output_config: OutputConfig | None = None
    service_tier: str | None = Field(default=None, description="accepted and ignored")
    stop_sequences: list[str] | None = Field(
        default=None, max_length=MAX_STOP_SEQUENCES, description="strings that end the answer"
    )
    stream: bool = False
    temperature: float | None = Field(
        default=None, ge=0.0, le=1.0, description=f"default {DEFAULT_TEMPERATURE}; 0 is greedy"
    )
    top_k: int | None = Field(default=None, ge=0, description="top-k sampling (0: off)")
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    # --- ggufworker extension ---
    speculative: bool = Field(
        default=True,
        description="verify draft tokens when the server speculates (--spec-type); false "
        "turns speculation off for this request",
    )

    def to_sampling_params(self) -> SamplingParams:
        """The engine's sampling settings (Anthropic's temperature default; the engine's
        top-k / top-p / min-p unless given)."""
        defaults = SamplingParams()
        schema = None
        if self.output_config is not None and self.output_config.format is not None:
            schema = self.output_config.format.schema_ or {"type": "object"}
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            stop=stop_strings(self.stop_sequences),
            json_schema=schema,
            speculative=self.speculative,
        )


# --- content translation -------------------------------------------------------------------


def _part(block: Any, where: str) -> dict[str, Any]:
    """A text, image or document block as a template content part."""
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ImageBlock):
        return {"type": "image", "source": block.source}
    if isinstance(block, DocumentBlock):
        source = block.source
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            return {"type": "text", "text": str(source["data"])}
        raise InvalidRequestError(
            f"{where}: only documents with a plain-text source are supported "
            f"(not {source.get('type')!r})",
            param=where,
        )
    raise InvalidRequestError(f"{where}: a {block.type} block cannot be here", param=where)


def _flat(parts: list[dict[str, Any]], sep: str = "") -> str | list[dict[str, Any]]:
    """Text parts joined into a string; with a media part, the parts as they are (the pipeline
    answers a model that cannot see them with a 400 naming the model)."""
    if all(p["type"] == "text" for p in parts):
        return sep.join(p["text"] for p in parts)
    return parts


def _user_messages(blocks: list[Any], param: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as ``tool`` messages and its other blocks as a user
    message, in block order (Anthropic puts tool results first)."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where = f"{param}.content[{j}]"
        if isinstance(block, ToolResultBlock):
            if parts:
                out.append({"role": "user", "content": _flat(parts)})
                parts = []
            out.append(_tool_message(block, where))
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            continue  # only an assistant thinks
        else:
            parts.append(_part(block, where))
    if parts or not out:
        out.append({"role": "user", "content": _flat(parts)})
    return out


def _tool_message(block: ToolResultBlock, where: str) -> dict[str, Any]:
    content: str | list[dict[str, Any]]
    if block.content is None:
        content = ""
    elif isinstance(block.content, str):
        content = block.content
    else:
        parts = [_part(b, f"{where}.content[{k}]") for k, b in enumerate(block.content)]
        content = _flat(parts, sep="\n")  # a result's blocks read as lines
    if block.is_error:
        error = "Error: "
        content = error + content if isinstance(content, str) else [_text(error), *content]
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": content}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _assistant_message(blocks: list[Any], param: str) -> dict[str, Any]:
    """An assistant turn: its text, ``tool_calls`` from its tool_use blocks and
    ``reasoning_content`` from its thinking blocks."""
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    thinking: list[str] = []
    for j, block in enumerate(blocks):
        if isinstance(block, ToolUseBlock):
            fn = {"name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}
            calls.append({"id": block.id, "type": "function", "function": fn})
        elif isinstance(block, ThinkingBlock):
            thinking.append(block.thinking)
        elif not isinstance(block, RedactedThinkingBlock):
            parts.append(_part(block, f"{param}.content[{j}]"))
    message: dict[str, Any] = {"role": "assistant", "content": _flat(parts)}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return message


# --- responses -----------------------------------------------------------------------------


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingContent(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = Field(description="opaque; not checked when sent back")


class ToolUseContent(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


OutputBlock = Annotated[TextContent | ThinkingContent | ToolUseContent, Field(discriminator="type")]


class Usage(BaseModel):
    input_tokens: int = Field(description="prompt tokens not read from the KV cache")
    output_tokens: int
    cache_creation_input_tokens: int = Field(
        default=0, description="always 0: nothing is written to a cache on request"
    )
    cache_read_input_tokens: int = Field(
        default=0, description="prompt tokens reused from the KV cache (a cached prefix)"
    )


class MessageResponse(BaseModel):
    """A message, as ``POST /v1/messages`` answers it without ``stream``."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[OutputBlock]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None = None
    usage: Usage


class CountTokensResponse(BaseModel):
    input_tokens: int = Field(description="every prompt token, cached or not")
