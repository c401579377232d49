"""Shared data for the chat-format tests: tools, calls and rendering one assistant turn."""

from __future__ import annotations

import json
import os
from typing import Any

from ggufworker import chat_formats as cf
from ggufworker.engine.chat import render_chat

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "city name"},
                    "days": {"type": "integer", "description": "forecast days"},
                },
                "required": ["city", "days"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_web",
            "description": "Search the web",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "what to look for"}},
                "required": ["query"],
            },
        },
    },
]

CALLS = [
    ("get_weather", {"city": "Paris", "days": 3}),
    ("search_web", {"query": "best croissant in Lyon"}),
]

USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def openai_calls(n: int) -> list[dict[str, Any]]:
    """The first ``n`` CALLS as OpenAI assistant ``tool_calls`` (ids of OpenAI's shape)."""
    return [
        {
            "id": f"call_{i}abcdefghijklmnop",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for i, (name, args) in enumerate(CALLS[:n])
    ]


def rendered_turn(template: str, fmt: cf.ChatFormat, n_calls: int) -> tuple[str, str]:
    """(prompt, turn): the generation prompt for USER, and the text of an assistant turn
    with ``n_calls`` calls as the template writes it (the rendering of the conversation with
    that turn, after the generation prompt)."""
    kwargs = {"bos_token": "<s>", "eos_token": "</s>", "tools": TOOLS}
    base = cf.prepare_messages(USER, fmt, template)
    turn = cf.prepare_messages(
        USER + [{"role": "assistant", "content": "", "tool_calls": openai_calls(n_calls)}],
        fmt,
        template,
    )
    prompt = render_chat(template, base, add_generation_prompt=True, **kwargs)
    history = render_chat(template, base, add_generation_prompt=False, **kwargs)
    full = render_chat(template, turn, add_generation_prompt=False, **kwargs)
    base_len = len(os.path.commonprefix([prompt, history]))
    gen = prompt[base_len:]
    start = len(os.path.commonprefix([full, prompt[:base_len]]))
    if gen and full.startswith(gen, start):
        start += len(gen)
    return prompt, full[start:]
