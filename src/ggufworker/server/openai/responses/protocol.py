"""Types of the OpenAI Responses API (pydantic v2) and its translation onto the chat pipeline.

A request's ``input`` (a string, or a list of items: messages, function calls and their
outputs, reasoning) is normalised into stored item shapes (:func:`normalize_input`), a
conversation of items becomes the template messages of one :class:`ChatRequest`
(:func:`items_to_messages`), and function tools and ``tool_choice`` in the Responses' flat shape
become OpenAI chat tools. Response objects are the models at the end of the module.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from ggufworker.engine.types import SamplingParams
from ggufworker.errors import InvalidRequestError
from ggufworker.server.core.chat import ChatRequest
from ggufworker.server.core.protocol import stop_strings
from ggufworker.server.openai.protocol import MAX_STOP, OpenAIBaseModel, Stop

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
    speculative: bool = Field(
        default=True,
        description="verify draft tokens when the server speculates (--spec-type); false "
        "turns speculation off for this request",
    )
    repeat_penalty: float | None = Field(
        default=None, ge=0.0, le=10.0, description="repetition penalty"
    )
    stop: Stop = Field(default=None, description=f"up to {MAX_STOP} stop strings")

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if len(value) > MAX_METADATA:
                raise ValueError(f"at most {MAX_METADATA} metadata pairs are allowed")
            if any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
                raise ValueError("metadata keys are at most 64 characters, values 512")
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
            speculative=self.speculative,
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
