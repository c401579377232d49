"""Tool calling in the Ollama API: what goes to the chat template, and forced calls.

A forced call (``tool_choice`` ``"required"`` or a named function; our extension, also read
from ``options.tool_choice`` since Ollama's clients send only ``options``) constrains sampling
with a JSON-schema grammar to ``{"name": ..., "arguments": {...}}`` and answers with
``message.tool_calls`` whose ``arguments`` are an object, as Ollama's are.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from ggufworker.errors import InvalidRequestError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolMode:
    """How one chat request treats its tools."""

    template_tools: list[dict[str, Any]] | None = None  # passed to the chat template
    schema: dict[str, Any] | None = None  # forced call: the output's JSON schema

    @property
    def buffered(self) -> bool:
        """A forced call is sent whole, in one chunk, once generated."""
        return self.schema is not None

    def message(self, text: str, done_reason: str) -> dict[str, Any]:
        """The assistant message for the generated ``text``."""
        if self.schema is None:
            return {"role": "assistant", "content": text}
        try:
            call = json.loads(text)
        except json.JSONDecodeError as exc:
            if done_reason == "length":
                raise InvalidRequestError(
                    "the tool call was cut off by num_predict; allow more tokens",
                    param="options",
                ) from exc
            raise
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"index": 0, "name": call["name"], "arguments": call["arguments"]}}
            ],
        }


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type", "function") != "function" or not isinstance(function, dict):
        raise InvalidRequestError("each tool must be {'type': 'function', 'function': {...}}")
    if not function.get("name"):
        raise InvalidRequestError("each tool's function needs a name", param="tools")
    return function


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    params = function.get("parameters") or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_mode(tools: list[dict[str, Any]] | None, choice: str | dict[str, Any] | None) -> ToolMode:
    """The tool handling of a request from its ``tools`` and ``tool_choice``.

    Raises:
        InvalidRequestError: malformed tools, an unknown choice, or a named tool not given.
    """
    if not tools or choice == "none":
        return ToolMode()
    functions = [_function(t) for t in tools]
    if choice in (None, "auto"):
        return ToolMode(template_tools=tools)
    if choice == "required":
        schemas = [_call_schema(f) for f in functions]
        schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
        return ToolMode(template_tools=tools, schema=schema)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        for function in functions:
            if function["name"] == name:
                return ToolMode(template_tools=tools, schema=_call_schema(function))
        raise InvalidRequestError(f"tool_choice names {name!r}, which is not in tools")
    raise InvalidRequestError(
        f"tool_choice must be 'auto', 'none', 'required' or a function, got {choice!r}"
    )
