"""Types of the OpenAI Responses API (pydantic v2) and its translation onto the chat pipeline.

A request's ``input`` (a string, or a list of items: messages, function calls and their
outputs, reasoning) is normalised into stored item shapes (:func:`normalize_input`), a
conversation of items becomes the template messages of one :class:`ChatRequest`
(:func:`items_to_messages`), and function tools and ``tool_choice`` in the Responses' flat shape
become OpenAI chat tools. Response objects are the models at the end of the module.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ggufworker.engine.types import SamplingParams
from ggufworker.errors import InvalidRequestError
from ggufworker.server.core.chat import ChatRequest
from ggufworker.server.core.protocol import stop_strings
from ggufworker.server.openai.protocol import MAX_STOP, OpenAIBaseModel

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]

#: most thinking tokens per effort level (None: no cap); "none" and "minimal" also turn the
#: template's thinking switch off
EFFORT_BUDGET: dict[str, int | None] = {
    "none": 0,
    "minimal": 0,
    "low": 1024,
    "medium": 4096,
    "high": None,
    "xhigh": None,
    "max": None,
}
#: the effort as templates that read ``reasoning_effort`` (GPT-OSS) know it
TEMPLATE_EFFORT = {
    "none": "low",
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
#: tool types OpenAI runs on its side; a local server cannot
HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "computer_use_preview",
        "computer",
        "code_interpreter",
        "image_generation",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "custom",
        "namespace",
        "tool_search",
    }
)
MAX_METADATA = 16
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


# --- request -------------------------------------------------------------------------------


class TextFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(OpenAIBaseModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(OpenAIBaseModel):
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None
    context: Literal["auto", "current_turn", "all_turns"] | None = Field(
        default=None,
        description="which earlier reasoning re-enters the prompt: the current turn's (auto, "
        "current_turn) or every turn's (all_turns)",
    )


class ResponsesInput(OpenAIBaseModel):
    """What decides a response's prompt: shared by creating and counting input tokens."""

    conversation: str | dict[str, Any] | None = Field(
        default=None, description="not supported (use previous_response_id)"
    )
    input: str | list[dict[str, Any]] | None = Field(
        default=None,
        description="a user message, or items: message (user, assistant, system, developer), "
        "function_call, function_call_output, reasoning",
    )
    instructions: str | None = Field(
        default=None, description="a system message first; not carried to later responses"
    )
    model: str | None = Field(default=None, description="served model name (default: the first)")
    parallel_tool_calls: bool | None = Field(
        default=None, description="allow several calls in one answer (default: true)"
    )
    previous_response_id: str | None = Field(
        default=None,
        description="a stored response whose input and output items come before this input",
    )
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    tool_choice: str | dict[str, Any] | None = Field(
        default=None,
        description='none | auto | required | {"type": "function", "name": ...} | '
        '{"type": "allowed_tools", "mode": ..., "tools": [...]}',
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="function tools: {type: function, name, description, parameters}"
    )
    truncation: Literal["auto", "disabled"] | None = Field(
        default=None,
        description="disabled (default): a prompt longer than the context is a 400; auto: the "
        "oldest turns are dropped until it fits",
    )

    def chat_tools(self) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any] | None]:
        """``tools`` and ``tool_choice`` in OpenAI chat's shape.

        Raises:
            InvalidRequestError: a hosted tool type, a malformed function tool or tool_choice.
        """
        tools = [_chat_tool(t, i) for i, t in enumerate(self.tools or [])]
        choice = self.tool_choice
        if choice is None or isinstance(choice, str):
            return tools or None, choice
        kind = choice.get("type")
        if kind == "function":
            name = choice.get("name")
            if not isinstance(name, str):
                raise InvalidRequestError(
                    'tool_choice must look like {"type": "function", "name": ...}',
                    param="tool_choice",
                )
            return tools or None, {"type": "function", "function": {"name": name}}
        if kind == "allowed_tools":
            allowed = {t.get("name") for t in choice.get("tools") or [] if isinstance(t, dict)}
            mode = choice.get("mode", "auto")
            if mode not in ("auto", "required"):
                raise InvalidRequestError(
                    "tool_choice.mode must be auto or required", param="tool_choice.mode"
                )
            kept = [t for t in tools if t["function"]["name"] in allowed]
            return kept or None, mode if kept else "none"
        raise InvalidRequestError(
            f"tool_choice type {kind!r} is not supported (function tools only)",
            param="tool_choice",
        )

    def chat_request(
        self, messages: list[dict[str, Any]], params: SamplingParams, *, split_thinking: bool
    ) -> ChatRequest:
        """A :class:`ChatRequest` over ``messages`` with ``params``: tools, tool choice and the
        reasoning effort (template switches and a thinking budget) from this request."""
        tools, choice = self.chat_tools()
        effort = self.reasoning.effort if self.reasoning else None
        kwargs: dict[str, Any] | None = None
        budget = None
        if effort is not None:
            budget = EFFORT_BUDGET[effort]
            kwargs = {"enable_thinking": budget != 0, "reasoning_effort": TEMPLATE_EFFORT[effort]}
        req = ChatRequest(
            messages=messages,
            params=params,
            model=self.model,
            tools=tools,
            tool_choice=choice,
            split_thinking=split_thinking,
            template_kwargs=kwargs,
            reasoning_budget=budget,
        )
        # unset: the pipeline's default (several calls under auto, one when a call is forced)
        if self.parallel_tool_calls is not None:
            req = replace(req, parallel_tool_calls=self.parallel_tool_calls)
        return req

    @property
    def all_turns(self) -> bool:
        """Every turn's reasoning re-enters the prompt (else the current turn's only)."""
        return self.reasoning is not None and self.reasoning.context == "all_turns"


class ResponsesRequest(ResponsesInput):
    """``POST /v1/responses``; fields in OpenAI's order, our extensions at the end."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "input": "Say hello.",
                    "instructions": "Be brief.",
                    "max_output_tokens": 16,
                    "temperature": 0,
                }
            ]
        }
    )

    background: bool = Field(
        default=False, description="answer at once (queued); generate in the background"
    )
    include: list[str] | None = Field(
        default=None, description='"reasoning.encrypted_content" is honoured; others ignored'
    )
    max_output_tokens: int | None = Field(
        default=None, ge=1, description="most output tokens, reasoning included"
    )
    max_tool_calls: int | None = Field(default=None, ge=0, description="accepted, not enforced")
    metadata: dict[str, str] | None = Field(
        default=None, description=f"up to {MAX_METADATA} string pairs, kept with the response"
    )
    prompt_cache_key: str | None = Field(
        default=None, description="accepted; prefix reuse is automatic"
    )
    service_tier: str | None = None
    store: bool | None = Field(default=None, description="keep the response (default: true)")
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="accepted, ignored")
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = None

    # --- extensions (llama.cpp samplers) -------------------------------------------------------
    seed: int | None = Field(default=None, description="sampling seed, for reproducible output")
    top_k: int | None = Field(default=None, ge=0, description="top-k sampling (0: off)")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, description="min-p sampling")
    repeat_penalty: float | None = Field(
        default=None, ge=0.0, le=10.0, description="repetition penalty"
    )
    stop: str | list[str] | None = Field(default=None, description=f"up to {MAX_STOP} stop strings")

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if len(value) > MAX_METADATA:
                raise ValueError(f"at most {MAX_METADATA} metadata pairs are allowed")
            if any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
                raise ValueError("metadata keys are at most 64 characters, values 512")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed")
        return value

    @property
    def stored(self) -> bool:
        return self.store is not False

    def to_sampling_params(self) -> SamplingParams:
        """The engine's sampling settings for this request."""
        defaults = SamplingParams()
        fmt = self.text.format if self.text else None
        schema: dict[str, Any] | None = None
        if fmt is not None and fmt.type == "json_object":
            schema = {"type": "object"}
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.schema_ is None:
                raise InvalidRequestError(
                    "text.format.schema is required for json_schema", param="text.format.schema"
                )
            schema = fmt.schema_ or {"type": "object"}
        return SamplingParams(
            max_tokens=self.max_output_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            min_p=defaults.min_p if self.min_p is None else self.min_p,
            repeat_penalty=(
                defaults.repeat_penalty if self.repeat_penalty is None else self.repeat_penalty
            ),
            seed=self.seed,
            stop=stop_strings(self.stop),
            json_schema=schema,
        )

    def to_chat_request(
        self, messages: list[dict[str, Any]], *, split_thinking: bool = True
    ) -> ChatRequest:
        """The request as the chat pipeline takes it, over ``messages`` (the whole conversation,
        from :func:`items_to_messages`)."""
        return self.chat_request(messages, self.to_sampling_params(), split_thinking=split_thinking)


class InputTokensRequest(ResponsesInput):
    """``POST /v1/responses/input_tokens``: the prompt part of a create request."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"input": "Say hello.", "instructions": "Be brief."}]}
    )


def _chat_tool(tool: Any, i: int) -> dict[str, Any]:
    param = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise InvalidRequestError(f"{param} must be an object", param=param)
    kind = tool.get("type", "function")
    if kind in HOSTED_TOOLS or (isinstance(kind, str) and kind.startswith("web_search")):
        raise InvalidRequestError(
            f"{param}: tool type {kind!r} is a hosted tool this server cannot run; only "
            "function tools are supported",
            param=f"{param}.type",
        )
    if kind != "function":
        raise InvalidRequestError(
            f"{param}: tool type {kind!r} is not supported; only function tools are",
            param=f"{param}.type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"{param}.name is required", param=f"{param}.name")
    parameters = tool.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise InvalidRequestError(
            f"{param}.parameters is not a JSON schema", param=f"{param}.parameters"
        )
    fn: dict[str, Any] = {"name": name, "parameters": parameters}
    if isinstance(tool.get("description"), str):
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}


def echo_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The request's function tools as a response shows them (``strict`` defaults to true)."""
    out = []
    for tool in tools or []:
        out.append(
            {
                "type": "function",
                "name": tool.get("name"),
                "description": tool.get("description"),
                "parameters": tool.get("parameters"),
                "strict": tool.get("strict", True),
            }
        )
    return out


# --- input items ---------------------------------------------------------------------------

_USER_PARTS = {"input_text", "input_image", "input_audio", "text"}
_ASSISTANT_PARTS = {"output_text", "refusal", "input_text", "text"}


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{param} must be a string", param=param)
    return value


def _parts(content: Any, role: str, param: str) -> list[dict[str, Any]]:
    """A message's content as typed parts (``input_text`` ... for the user side,
    ``output_text`` / ``refusal`` for the assistant)."""
    assistant = role == "assistant"
    if isinstance(content, str):
        return [_part("output_text" if assistant else "input_text", content)]
    if not isinstance(content, list):
        raise InvalidRequestError(f"{param} must be a string or a list of parts", param=param)
    out = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        allowed = _ASSISTANT_PARTS if assistant else _USER_PARTS
        if kind == "input_file":
            raise InvalidRequestError(
                f"{where}: input_file parts are not supported (there is no file store); "
                "send the text as input_text",
                param=where,
            )
        if kind not in allowed:
            raise InvalidRequestError(
                f"{where}: part type {kind!r} is not allowed in a {role} message "
                f"({', '.join(sorted(allowed))})",
                param=f"{where}.type",
            )
        assert isinstance(part, dict)
        if kind == "refusal":
            out.append({"type": "refusal", "refusal": _text(part.get("refusal"), where)})
        elif kind in ("input_text", "output_text", "text"):
            text = _text(part.get("text"), f"{where}.text")
            out.append(_part("output_text" if assistant else "input_text", text))
        else:
            out.append(dict(part))
    return out


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": kind, "text": text}


def normalize_input(value: str | list[Any] | None) -> list[dict[str, Any]]:
    """The request's ``input`` as stored items, each with an id and OpenAI's item shape.

    Raises:
        InvalidRequestError: an item or part of a type this server cannot use, or malformed,
            with ``param`` pointing at it.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [_message("user", [_part("input_text", value)], None)]
    return [_item(raw, f"input[{i}]") for i, raw in enumerate(value)]


def _message(role: str, parts: list[dict[str, Any]], item_id: Any) -> dict[str, Any]:
    return {
        "id": item_id if isinstance(item_id, str) and item_id else new_item_id("msg"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": parts,
    }


def _item(raw: Any, param: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{param} must be an object", param=param)
    kind = raw.get("type") or ("message" if "role" in raw else None)
    if kind == "message":
        role = raw.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequestError(
                f"{param}.role must be user, assistant, system or developer, not {role!r}",
                param=f"{param}.role",
            )
        if "content" not in raw:
            raise InvalidRequestError(f"{param}.content is required", param=f"{param}.content")
        return _message(role, _parts(raw["content"], role, f"{param}.content"), raw.get("id"))
    if kind == "function_call":
        arguments = raw.get("arguments", "{}")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return {
            "id": raw.get("id") or new_item_id("fc"),
            "type": "function_call",
            "call_id": _text(raw.get("call_id"), f"{param}.call_id"),
            "name": _text(raw.get("name"), f"{param}.name"),
            "arguments": _text(arguments, f"{param}.arguments"),
            "status": "completed",
        }
    if kind == "function_call_output":
        output = raw.get("output")
        if not isinstance(output, str):
            output = _parts(output, "user", f"{param}.output")
        return {
            "id": raw.get("id") or new_item_id("fco"),
            "type": "function_call_output",
            "call_id": _text(raw.get("call_id"), f"{param}.call_id"),
            "output": output,
            "status": "completed",
        }
    if kind == "reasoning":
        summary = raw.get("summary") or []
        content = raw.get("content")
        if not isinstance(summary, list) or not isinstance(content, list | None):
            raise InvalidRequestError(f"{param}: summary and content must be lists", param=param)
        return {
            "id": raw.get("id") or new_item_id("rs"),
            "type": "reasoning",
            "summary": summary,
            "content": content,
            "encrypted_content": raw.get("encrypted_content"),
        }
    raise InvalidRequestError(
        f"{param}: item type {kind!r} is not supported (message, function_call, "
        "function_call_output, reasoning)",
        param=f"{param}.type",
    )


def reasoning_text(item: dict[str, Any]) -> str:
    """What a reasoning item says the model thought: its ``reasoning_text`` parts, else what
    our own ``encrypted_content`` holds (summaries are not what the model wrote)."""
    texts = [
        str(p.get("text", ""))
        for p in item.get("content") or []
        if isinstance(p, dict) and p.get("type") == "reasoning_text"
    ]
    if texts:
        return "".join(texts)
    blob = item.get("encrypted_content")
    return (open_reasoning(blob) or "") if isinstance(blob, str) else ""


def _template_content(parts: list[dict[str, Any]] | str) -> str | list[dict[str, Any]]:
    """Typed parts as template content: text, or a list with media parts kept (the pipeline
    answers those with a 400 naming the model)."""
    if isinstance(parts, str):
        return parts
    if all(p.get("type") in ("input_text", "output_text", "refusal") for p in parts):
        return "".join(str(p.get("text", p.get("refusal", ""))) for p in parts)
    out: list[dict[str, Any]] = []
    for p in parts:
        kind = p.get("type")
        if kind in ("input_text", "output_text"):
            out.append({"type": "text", "text": p.get("text", "")})
        elif kind == "input_image":
            out.append({**p, "type": "image"})
        elif kind == "input_audio":
            out.append({**p, "type": "audio"})
        else:
            out.append({"type": "text", "text": str(p.get("refusal", ""))})
    return out


def items_to_messages(
    items: list[dict[str, Any]], *, instructions: str | None, all_turns: bool = False
) -> list[dict[str, Any]]:
    """A conversation of items as template messages.

    Consecutive assistant-side items (reasoning, a message, function calls) make one assistant
    message with ``content``, ``reasoning_content`` and ``tool_calls``; a function call's output
    is a ``tool`` message. Reasoning re-enters the prompt for the turn after the last user
    message only (``all_turns``: for every turn); templates that drop earlier thinking drop it
    anyway. System and developer messages at the start are one system message, after
    ``instructions``.
    """
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    names: dict[str, str] = {}
    pending: dict[str, Any] | None = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            messages.append(pending)
            pending = None

    for item in items:
        kind = item.get("type")
        if kind == "message" and item.get("role") != "assistant":
            flush()
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _template_content(item["content"])})
            continue
        if kind == "function_call_output":
            flush()
            tool: dict[str, Any] = {
                "role": "tool",
                "tool_call_id": item["call_id"],
                "content": _template_content(item["output"]),
            }
            if item["call_id"] in names:
                tool["name"] = names[item["call_id"]]
            messages.append(tool)
            continue
        if kind == "reasoning":
            if pending is not None and (pending["content"] or pending.get("tool_calls")):
                flush()
            pending = pending or {"role": "assistant", "content": ""}
            pending["reasoning_content"] = pending.get("reasoning_content", "") + reasoning_text(
                item
            )
        elif kind == "message":
            if pending is not None and pending.get("tool_calls"):
                flush()
            pending = pending or {"role": "assistant", "content": ""}
            text = _template_content(item["content"])
            pending["content"] += text if isinstance(text, str) else ""
        elif kind == "function_call":
            pending = pending or {"role": "assistant", "content": ""}
            names[item["call_id"]] = item["name"]
            pending.setdefault("tool_calls", []).append(
                {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                }
            )
    flush()
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    for i, m in enumerate(messages):
        if "reasoning_content" in m and (
            not m["reasoning_content"] or (i < last_user and not all_turns)
        ):
            del m["reasoning_content"]
    return _merge_leading_system(messages)


def _merge_leading_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leading system messages as one (many templates take a single system message first)."""
    n = 0
    while n < len(messages) and messages[n]["role"] == "system":
        n += 1
    texts = [m["content"] for m in messages[:n]]
    if n < 2 or not all(isinstance(t, str) for t in texts):
        return messages
    return [{"role": "system", "content": "\n\n".join(texts)}, *messages[n:]]


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
