"""Chat templates: the GGUF's Jinja2 template rendered in a sandbox.

Templates are untrusted input (they come with downloaded files), so they run in Jinja2's
sandbox. Lists and dicts may be changed in place (Kimi-K2's templates ``append`` to lists,
which llama.cpp's template engine allows too), so templates get copies of the messages and
tools. The globals follow what Hugging Face's ``apply_chat_template`` provides
(``raise_exception``, ``strftime_now``, ``bos_token``, ``eos_token``, ``tools``), which is what
real templates rely on.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
from collections.abc import Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import SandboxedEnvironment

from ggufworker.errors import InvalidRequestError

# Used when a GGUF carries no template: ChatML, the most widely trained-on format.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TemplateError(InvalidRequestError):
    """The template raised (``raise_exception``) or failed to render these messages."""

    param = "messages"


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _json_default(value: Any) -> Any:
    # Jinja2 filters such as map() return generators; templates pass them to tojson.
    if isinstance(value, (list, tuple, set)) or hasattr(value, "__iter__"):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    # HF's tojson does not escape HTML and keeps non-ASCII; Jinja2's default does both.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, default=_json_default)


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks the assistant's own
    tokens with it (for training masks); rendering just keeps the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = SandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _GenerationBlock],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    bos_token: str | None,
    eos_token: str | None,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """Render a conversation with a chat template (or the ChatML fallback).

    Args:
        template: Jinja2 source from ``tokenizer.chat_template``; None uses ChatML.
        messages: OpenAI-style messages (``role``, ``content``, optional ``tool_calls``...).
        bos_token, eos_token: the model's special token texts, as templates expect.
        tools: OpenAI tool definitions, passed to the template as ``tools``.
        add_generation_prompt: end with the header of an assistant turn.

    Returns:
        The prompt text; special tokens in it are meant to be parsed as special.

    Raises:
        TemplateError: the template raised or could not be rendered.
    """
    try:
        tmpl = _compile(template or FALLBACK_TEMPLATE)
        return tmpl.render(
            messages=copy.deepcopy(messages),
            tools=copy.deepcopy(tools),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            **extra,
        )
    except TemplateError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
        # templates are untrusted code: their runtime errors are the request's problem
        raise TemplateError(f"chat template failed: {exc}") from exc


class TextHelpers:
    """Tokenizer and chat template helpers (any thread) of an engine whose ``_vocab`` is the
    model's vocabulary (a :class:`~ggufworker.engine.model.Model`, perhaps vocabulary-only)
    and ``info`` its :class:`~ggufworker.engine.types.ModelInfo`."""

    _vocab: Any
    info: Any

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """Tokenize ``text`` (BOS added if the model wants it and ``add_special``)."""
        return self._vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Token ids back to text."""
        return self._vocab.detokenize(ids)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """Render messages with the model's chat template (ChatML if it has none);
        ``template_kwargs`` become extra template variables (``enable_thinking``...).

        Tokenize the result with ``parse_special=True``; user text inside it stays plain text
        only if callers never let users inject template tokens, which is the server's job.
        """
        return render_chat(
            self.info.chat_template,
            messages,
            bos_token=self.info.bos_token,
            eos_token=self.info.eos_token,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )
