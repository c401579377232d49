"""A Responses conversation as template messages: ``input`` (a string, or message, function
call, function call output and reasoning items) is normalised into stored item shapes
(:func:`normalize_input`), and a conversation of items becomes the template messages of one chat
request (:func:`items_to_messages`)."""

from __future__ import annotations

import json
from typing import Any

from ggufworker.errors import InvalidRequestError
from ggufworker.server.openai.responses.objects import new_item_id, open_reasoning

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
