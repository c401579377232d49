"""Checking a request's ``tools`` and ``tool_choice`` (shared by the API surfaces)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ggufworker.chat_formats.reasoning import detect_reasoning
from ggufworker.errors import InvalidRequestError

_SCHEMA_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


@dataclass(frozen=True)
class ToolChoice:
    """A resolved ``tool_choice``: ``mode`` is none / auto / required / named."""

    mode: str
    name: str | None = None


def validate_tools(tools: list[dict[str, Any]] | None) -> None:
    """Reject tools that are not OpenAI function tools with a JSON-schema ``parameters``.

    Raises:
        InvalidRequestError: with ``param`` naming the bad tool.
    """
    seen: set[str] = set()
    for i, tool in enumerate(tools or []):
        param = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise InvalidRequestError(f"{param}: only function tools are supported", param=param)
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequestError(f"{param}.function.name is required", param=param)
        params = fn.get("parameters", {"type": "object"})
        if not _is_schema(params):
            raise InvalidRequestError(
                f"{param}.function.parameters is not a JSON schema",
                param=f"{param}.function.parameters",
            )
        if fn["name"] in seen:
            raise InvalidRequestError(f"{param}: duplicate tool name {fn['name']!r}", param=param)
        seen.add(fn["name"])


def _is_schema(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    kind = value.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if any(not isinstance(k, str) or k not in _SCHEMA_TYPES for k in kinds):
        return False
    props = value.get("properties")
    if props is not None and (
        not isinstance(props, dict) or not all(isinstance(p, dict) for p in props.values())
    ):
        return False
    required = value.get("required")
    return required is None or (
        isinstance(required, list) and all(isinstance(r, str) for r in required)
    )


def resolve_tool_choice(
    tool_choice: str | dict[str, Any] | None, tools: list[dict[str, Any]] | None
) -> ToolChoice:
    """OpenAI's ``tool_choice`` checked against ``tools``.

    Raises:
        InvalidRequestError: ``param="tool_choice"`` for an unknown value, a named tool that
            is not in ``tools``, or a choice other than ``none`` with no tools.
    """
    names = {(t.get("function") or {}).get("name") for t in tools or []}
    if tool_choice is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise InvalidRequestError(
                f"tool_choice must be none, auto, required or a function, not {tool_choice!r}",
                param="tool_choice",
            )
        if tool_choice != "none" and not tools:
            raise InvalidRequestError(
                f"tool_choice {tool_choice!r} needs tools", param="tool_choice"
            )
        return ToolChoice(tool_choice)
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if tool_choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequestError(
            'tool_choice must look like {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if not tools:
        raise InvalidRequestError(
            "tool_choice names a function but no tools were given", param="tool_choice"
        )
    if name not in names:
        raise InvalidRequestError(f"tool_choice names unknown tool {name!r}", param="tool_choice")
    return ToolChoice("named", name)


def capabilities(template: str | None) -> list[str]:
    """What a chat template supports beyond chat: ``tools`` (always: templates without a
    native call syntax use the generic JSON format) and ``reasoning`` (it has thinking
    markers)."""
    # every template gets tools: one without a native syntax uses the generic JSON format
    caps = ["tools"]
    if detect_reasoning(template) is not None:
        caps.append("reasoning")
    return caps
