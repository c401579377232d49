"""GPT-OSS (OpenAI harmony): the output is a sequence of messages
``<|channel|>analysis<|message|>...<|end|>`` (reasoning), ``<|channel|>final<|message|>...``
(the answer) and ``<|channel|>commentary to=functions.f <|constrain|>json<|message|>{...}``
(a call; the recipient may also come before the channel).

``openai-harmony`` renders and parses this format too, but it loads its tokenizer tables from
the network on first use; this parser reads the text the engine already detokenized.
"""

from __future__ import annotations

import re
from typing import Any

from ggufworker.chat_formats.base import ChatFormat, GrammarShape, PartialCall, Split, register
from ggufworker.chat_formats.textscan import find_first, held_suffix, json_end, load_json

_HEAD_START = ("<|start|>", "<|channel|>", "to=")
_BODY_END = ("<|end|>", "<|call|>", "<|return|>", "<|start|>")
_RECIPIENT = re.compile(r"to=(?:functions\.)?(?P<name>[^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>(?P<channel>\w+)")


@register
class Harmony(ChatFormat):
    name = "harmony"
    description = "GPT-OSS harmony: channels analysis / commentary to=functions.f / final"
    markers = ("<|channel|>", "<|message|>")
    priority = 60
    start_markers = ("<|start|>", "<|channel|>", " to=", "<|message|>")
    owns_reasoning = True

    def split_calls(self, text: str, *, partial: bool, tools: list[dict[str, Any]]) -> Split:
        reasoning: list[str] = []
        content: list[str] = []
        calls: list[PartialCall] = []
        pos = len(text) - len(text.lstrip())
        if not text.lstrip().startswith(_HEAD_START) and not (
            partial and any(m.startswith(text.lstrip()) for m in _HEAD_START)
        ):
            # no harmony structure: plain text is the answer
            return Split(text[: len(text) - held_suffix(text, _HEAD_START)] if partial else text)
        while pos < len(text):
            msg = text.find("<|message|>", pos)
            if msg < 0:
                break  # header still being written (or trailing junk): nothing to show
            header = text[pos:msg]
            body_start = msg + len("<|message|>")
            found = find_first(text, _BODY_END, body_start)
            end = found[0] if found else len(text)
            body = text[body_start:end]
            if found is None and partial:
                body = body[: len(body) - held_suffix(body, _BODY_END)]
            ch = _CHANNEL.search(header)
            channel = ch.group("channel") if ch else "final"
            rcp = _RECIPIENT.search(header)
            if rcp is not None:
                stop = json_end(body, body.find("{")) if "{" in body else None
                done = found is not None or not partial
                args = body.strip()
                if done and load_json(args) is None and stop is not None:
                    args = body[body.find("{") : stop]
                calls.append(PartialCall(rcp.group("name"), args or None, None, done))
            elif channel == "analysis":
                reasoning.append(body)
            else:
                content.append(body)
            if found is None:
                break
            pos = found[0] + len(found[1])
        return Split("\n".join(c.strip() for c in content), calls, "", "\n".join(reasoning))

    def grammar_shape(self) -> GrammarShape:
        return GrammarShape(
            call="<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{args}",
            triggers=("<|channel|>commentary to=",),
        )
