"""Objects of the Responses API the server answers with (pydantic v2), item ids, and the
reasoning blob a client that stores nothing sends back."""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

SEALED_PREFIX = "ggufworker.reasoning.v1:"


def new_item_id(prefix: str) -> str:
    """An id in OpenAI's style: ``resp_...``, ``msg_...``, ``fc_...``, ``rs_...``."""
    return f"{prefix}_{secrets.token_hex(24)}"


def seal_reasoning(text: str) -> str:
    """``encrypted_content`` for a reasoning item: the text, base64-encoded (not encrypted;
    it lets a client that stores nothing send the reasoning back)."""
    return SEALED_PREFIX + base64.urlsafe_b64encode(text.encode()).decode()


def open_reasoning(blob: str) -> str | None:
    """The text :func:`seal_reasoning` wrapped, or None for anyone else's blob."""
    if not blob.startswith(SEALED_PREFIX):
        return None
    try:
        return base64.urlsafe_b64decode(blob[len(SEALED_PREFIX) :].encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


# --- responses -----------------------------------------------------------------------------

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ResponseStatus = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class ReasoningPart(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class SummaryPart(BaseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningItem(BaseModel):
    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[SummaryPart] = Field(default_factory=list)
    content: list[ReasoningPart] = Field(default_factory=list)
    encrypted_content: str | None = None
    status: ItemStatus | None = None


class FunctionCallItem(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = Annotated[
    OutputMessage | ReasoningItem | FunctionCallItem, Field(discriminator="type")
]


class InputTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens reused from the KV cache")
    cache_write_tokens: int = Field(description="prompt tokens computed and written to it")


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(BaseModel):
    """A response, as created, retrieved and streamed (in ``response.*`` events)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool = False
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = Field(default_factory=dict)
    service_tier: str = "default"
    store: bool = True
    temperature: float
    text: dict[str, Any] = Field(default_factory=dict)
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_logprobs: int = 0
    top_p: float
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class InputItemList(BaseModel):
    """A page of a response's input items (OpenAI's cursor list)."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class InputTokensResponse(BaseModel):
    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int
