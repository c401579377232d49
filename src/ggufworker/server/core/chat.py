"""The one chat pipeline every API surface translates into.

A surface (OpenAI chat, OpenAI Responses, Anthropic Messages) turns its request into a
:class:`ChatRequest` — template messages in the OpenAI shape, OpenAI function tools, an OpenAI
``tool_choice`` and the engine's sampling settings — and reads the one result back: parsed
answers (:class:`ChatAnswer`) or, streamed, :class:`ChatDelta` events. Templates, tool-call
formats, grammars, reasoning separation, the thinking budget and batching exist here once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request

from ggufworker import chat_formats as cf
from ggufworker.config import ServerSettings
from ggufworker.engine.types import (
    GenerationRequest,
    ReasoningBudget,
    SamplingParams,
    TokenEvent,
)
from ggufworker.errors import InvalidRequestError
from ggufworker.server.core.generation import Generation, collect, seeded, start_generation
from ggufworker.server.core.metrics import Metrics
from ggufworker.server.core.models import Lease, ModelManager


@dataclass(frozen=True)
class ChatRequest:
    """A chat request as the pipeline takes it, whatever API it came through.

    Attributes:
        messages: template messages (``role``, ``content`` text, ``tool_calls`` in OpenAI's
            shape, ``tool_call_id``, ``name``). ``content`` may also be a list of parts,
            ``{"type": "text", "text": ...}`` and ``{"type": "image"|"audio", ...}``: text parts
            are joined; a media part to a model without a projector is a 400 naming the model.
        params: sampling settings (``max_tokens``, stops, ``json_schema``, ...).
        model: the served model name (None: the default one).
        tools: OpenAI function tools (``{"type": "function", "function": {...}}``).
        tool_choice: OpenAI's ``tool_choice`` (none / auto / required / named function).
        parallel_tool_calls: allow several calls in one answer (None: the default, which is
            yes for ``auto`` and one call for a forced choice: a forced call ends the turn).
        split_thinking: move a thinking block out of the content (else it stays in the text).
        template_kwargs: extra chat-template variables (``enable_thinking``, ...).
        reasoning_budget: most thinking tokens before the block is closed (None: no cap).
        n: independent choices of the one prompt.
    """

    messages: list[dict[str, Any]]
    params: SamplingParams
    model: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    split_thinking: bool = True
    template_kwargs: dict[str, Any] | None = None
    reasoning_budget: int | None = None
    n: int = 1
    #: LoRA adapters ((name or id, scale) pairs; None: the model id's adapter or the defaults)
    lora: tuple[tuple[str | int, float], ...] | None = None


MEDIA_PARTS = frozenset({"image", "audio"})


def with_text_content(req: ChatRequest, model: str) -> ChatRequest:
    """``req`` with every message's content as text (text parts joined).

    Raises:
        InvalidRequestError: a message holds an image or audio part; no served model has a
            projector yet, so the request names the model that cannot take it.
    """
    if all(isinstance(m.get("content"), str | None) for m in req.messages):
        return req
    messages = []
    for i, message in enumerate(req.messages):
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in MEDIA_PARTS:
                    raise InvalidRequestError(
                        f"model {model!r} cannot take {kind} input (it has no multimodal "
                        "projector); send text only",
                        param=f"messages[{i}].content",
                    )
                if kind != "text":
                    raise InvalidRequestError(
                        f"content part type {kind!r} is not supported",
                        param=f"messages[{i}].content",
                    )
                texts.append(str(part.get("text", "")))
            message = {**message, "content": "".join(texts)}
        messages.append(message)
    return replace(req, messages=messages)


@dataclass(frozen=True)
class ChatPlan:
    """One chat request prepared for one model: prompt, sampling, output parser."""

    prompt: str
    params: SamplingParams
    parser: cf.OutputParser


def plan_chat(
    req: ChatRequest,
    *,
    template: str | None,
    bos_token: str | None,
    eos_token: str | None,
    tool_call_format: str | None = None,
    render: Callable[..., str] | None = None,
) -> ChatPlan:
    """Render ``req`` for a model with ``template`` and decide grammar, parsing and budget.

    Raises:
        InvalidRequestError: bad tools / tool_choice, or the template failed.
    """
    cf.validate_tools(req.tools)
    choice = cf.resolve_tool_choice(req.tool_choice, req.tools)
    fmt = cf.detect_format(template, override=tool_call_format)
    spec = cf.detect_reasoning(template)
    rendered = cf.render_with_tools(
        template,
        req.messages,
        fmt=fmt,
        tools=req.tools,
        bos_token=bos_token,
        eos_token=eos_token,
        reasoning=spec,
        template_kwargs=req.template_kwargs,
        render=render,
    )
    tools = req.tools or []
    use_tools = bool(tools) and choice.mode != "none"
    params = req.params
    lead = fmt.output_lead(rendered.prompt)
    grammar = None
    if use_tools and params.grammar is None and params.json_schema is None:
        grammar = cf.build_tool_grammar(
            fmt,
            tools,
            mode=choice.mode,
            name=choice.name,
            parallel=(
                req.parallel_tool_calls
                if req.parallel_tool_calls is not None
                else choice.mode == "auto"
            ),
            reasoning=spec,
            forced_open=rendered.forced_open,
            lead=lead,
        )
    parser = cf.OutputParser(
        fmt,
        spec,
        forced_open=rendered.forced_open,
        parse_tools=use_tools,
        split_thinking=req.split_thinking,
        tools=tools,
        lead=lead,
    )
    budget = None
    if spec is not None and req.reasoning_budget is not None:
        budget = ReasoningBudget(
            tokens=req.reasoning_budget,
            start=spec.start,
            end=spec.end,
            open_at_start=rendered.forced_open,
        )
    params = replace(
        params,
        tool_grammar=grammar,
        render_special=use_tools or spec is not None,
        reasoning_budget=budget,
    )
    return ChatPlan(rendered.prompt, params, parser)


@dataclass
class ChatAnswer:
    """One parsed choice of a finished chat."""

    index: int
    content: str
    reasoning: str
    tool_calls: list[cf.ToolCall]
    #: stop (end of turn or stop string), length (max tokens), tool_calls
    finish_reason: str
    #: the stop string that ended the answer, when one did
    stop_sequence: str | None
    completion_tokens: int
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ChatUsage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int = 0


@dataclass
class ChatDelta:
    """A streamed piece of one choice: text, thinking and tool-call pieces, or the end."""

    index: int
    delta: cf.StreamDelta
    event: TokenEvent
    #: set on the choice's last delta, with the full parsed answer
    answer: ChatAnswer | None = None


def _finish(
    index: int,
    result: cf.ParseResult,
    finish_reason: str | None,
    tokens: int,
    stop_sequence: str | None,
    parser: cf.OutputParser,
) -> ChatAnswer:
    calls = [
        cf.ToolCall(t.name, t.arguments, t.id or parser.fmt.new_call_id())
        for t in result.tool_calls
    ]
    finish = finish_reason or "stop"
    if calls and finish == "stop":
        finish = "tool_calls"
    return ChatAnswer(
        index=index,
        content=result.content,
        reasoning=result.reasoning,
        tool_calls=calls,
        finish_reason=finish,
        stop_sequence=stop_sequence if finish == "stop" else None,
        completion_tokens=tokens,
    )


class ChatSession:
    """A submitted chat: its plan, its engine requests, and its answers or stream."""

    def __init__(self, plan: ChatPlan, generation: Generation) -> None:
        self.plan = plan
        self.generation = generation
        self.created = int(time.time())

    @property
    def model(self) -> str:
        return self.generation.lease.name

    def usage(self, answers: list[ChatAnswer] | None = None) -> ChatUsage:
        """Token counts (``n`` choices of one prompt count the prompt once)."""
        u = self.generation.usage(shared_prompt=True)
        reasoning = 0
        for a in answers or []:
            if a.reasoning:
                reasoning += len(self.generation.engine.tokenize(a.reasoning))
        return ChatUsage(
            prompt_tokens=u["prompt_tokens"],
            completion_tokens=u["completion_tokens"],
            cached_tokens=u["prompt_tokens_details"]["cached_tokens"],
            reasoning_tokens=reasoning,
        )

    def _parse(self, text: str) -> cf.ParseResult:
        if not self.plan.parser.active:
            return cf.ParseResult(text, "", [])
        return self.plan.parser.parse(text)

    async def answers(
        self,
        request: Request,
        on_event: Callable[[int, TokenEvent], None] | None = None,
    ) -> list[ChatAnswer]:
        """Run to the end (cancelled when the client goes away) and parse every choice."""

        def event(index: int, ev: TokenEvent) -> None:
            if on_event is not None:
                on_event(index, ev)

        await collect(request, self.generation, event)
        out = []
        for c in self.generation.choices:
            out.append(
                _finish(
                    c.index,
                    self._parse("".join(c.text)),
                    c.finish_reason,
                    c.tokens,
                    c.stop_sequence,
                    self.plan.parser,
                )
            )
        return out

    async def deltas(self) -> AsyncIterator[ChatDelta]:
        """Stream parsed pieces of every choice; each choice's last delta carries its answer.

        The generation is closed (engine requests cancelled) when the consumer stops.
        """
        gen = self.generation
        streams = [cf.StreamParser(self.plan.parser) for _ in gen.choices]
        try:
            async for index, event in gen.events():
                if not self.plan.parser.active:
                    d = cf.StreamDelta(content=event.text)
                else:
                    d = streams[index].feed(event.text) if event.text else cf.StreamDelta()
                if event.finish_reason is None:
                    yield ChatDelta(index, d, event)
                    continue
                choice = gen.choices[index]
                if self.plan.parser.active:
                    last, result = streams[index].finish()
                    d = _merge(d, last)
                else:
                    result = cf.ParseResult("".join(choice.text), "", [])
                answer = _finish(
                    index,
                    result,
                    event.finish_reason,
                    choice.tokens,
                    choice.stop_sequence,
                    self.plan.parser,
                )
                yield ChatDelta(index, d, event, answer)
        finally:
            gen.close()

    def close(self) -> None:
        self.generation.close()


def _merge(a: cf.StreamDelta, b: cf.StreamDelta) -> cf.StreamDelta:
    if not b:
        return a
    if not a:
        return b
    return cf.StreamDelta(
        content=a.content + b.content,
        reasoning=a.reasoning + b.reasoning,
        tool_calls=[*a.tool_calls, *b.tool_calls],
    )


class ChatPipeline:
    """Chat over the served models; every chat-shaped surface holds one (``app.state.chat``)."""

    def __init__(
        self, manager: ModelManager, metrics: Metrics, settings: ServerSettings | None = None
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.settings = settings

    def plan(self, req: ChatRequest, lease: Lease) -> ChatPlan:
        """``req`` planned for the leased model (its template, tokens and tool-call format)."""
        info = lease.engine.info
        return plan_chat(
            with_text_content(req, lease.name),
            template=info.chat_template,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            tool_call_format=self.settings.tool_call_format if self.settings else None,
            render=lease.engine.render_chat,
        )

    async def start(self, req: ChatRequest) -> ChatSession:
        """Plan ``req`` for its model and submit it.

        Raises:
            ModelNotFoundError, InvalidRequestError, ServerOverloadedError: as the model
                manager and the planner raise them, before anything is generated.
        """
        plans: list[ChatPlan] = []

        def make_reqs(lease: Lease) -> list[GenerationRequest]:
            plan = self.plan(req, lease)
            plans.append(plan)
            return [
                GenerationRequest(
                    prompt=plan.prompt,
                    params=seeded(plan.params, i),
                    parse_special=True,
                    lora=req.lora,
                )
                for i in range(req.n)
            ]

        generation = await start_generation(self.manager, self.metrics, req.model, make_reqs)
        return ChatSession(plans[-1], generation)

    async def count_tokens(self, req: ChatRequest) -> tuple[str, int]:
        """The model name and the prompt tokens ``req`` would take, without generating."""
        lease = await self.manager.acquire(req.model)
        try:
            plan = self.plan(req, lease)
            ids = lease.engine.tokenize(plan.prompt, add_special=True, parse_special=True)
            return lease.name, len(ids)
        finally:
            lease.release()
