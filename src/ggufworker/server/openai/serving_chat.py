"""Serving logic of /v1/chat/completions: render the chat template (with tools and call
history), enforce ``tool_choice`` by grammar, generate, and shape OpenAI's chat responses and
chunks with ``tool_calls`` and ``reasoning_content`` split out of the text."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ggufworker import chat_formats as cf
from ggufworker.config import ServerSettings
from ggufworker.engine.types import GenerationRequest, SamplingParams, TokenEvent
from ggufworker.server.core.generation import (
    Generation,
    chat_logprob,
    collect,
    seeded,
    start_generation,
)
from ggufworker.server.core.metrics import Metrics
from ggufworker.server.core.models import Lease, ModelManager
from ggufworker.server.core.protocol import new_id
from ggufworker.server.core.sse import sse_event, sse_response
from ggufworker.server.openai.protocol import ChatCompletionRequest


@dataclass(frozen=True)
class ChatPlan:
    """One chat request prepared for one model: prompt, sampling, output parser."""

    prompt: str
    params: SamplingParams
    parser: cf.OutputParser


def plan_chat(
    body: ChatCompletionRequest,
    params: SamplingParams,
    *,
    template: str | None,
    bos_token: str | None,
    eos_token: str | None,
    settings: ServerSettings | None,
    render: Callable[..., str] | None = None,
) -> ChatPlan:
    """Render ``body`` for a model with ``template`` and decide grammar and parsing.

    Raises:
        InvalidRequestError: bad tools / tool_choice, or the template failed.
    """
    cf.validate_tools(body.tools)
    choice = cf.resolve_tool_choice(body.tool_choice, body.tools)
    override = settings.tool_call_format if settings else None
    fmt = cf.detect_format(template, override=override)
    spec = cf.detect_reasoning(template)
    rendered = cf.render_with_tools(
        template,
        body.template_messages(),
        fmt=fmt,
        tools=body.tools,
        bos_token=bos_token,
        eos_token=eos_token,
        reasoning=spec,
        template_kwargs=body.chat_template_kwargs,
        render=render,
    )
    tools = body.tools or []
    use_tools = bool(tools) and choice.mode != "none"
    grammar = None
    if use_tools and params.grammar is None and params.json_schema is None:
        grammar = cf.build_tool_grammar(
            fmt,
            tools,
            mode=choice.mode,
            name=choice.name,
            parallel=body.parallel_tool_calls is not False,
            reasoning=spec,
            forced_open=rendered.forced_open,
        )
    mode = body.reasoning_format or (settings.reasoning_format if settings else "auto")
    parser = cf.OutputParser(
        fmt,
        spec,
        forced_open=rendered.forced_open,
        parse_tools=use_tools,
        split_thinking=mode == "auto",
        tools=tools,
        lead=fmt.output_lead(rendered.prompt),
    )
    params = replace(params, tool_grammar=grammar, render_special=use_tools or spec is not None)
    return ChatPlan(rendered.prompt, params, parser)


def message_of(result: cf.ParseResult, *, reasoning_shown: bool) -> dict[str, Any]:
    """OpenAI's assistant ``message`` for a parsed answer (reasoning in both field names)."""
    message: dict[str, Any] = {"role": "assistant", "content": result.content or None}
    if result.tool_calls:
        message["tool_calls"] = [
            c.to_openai(c.id or f"call_{i}") for i, c in enumerate(result.tool_calls)
        ]
    elif message["content"] is None:
        message["content"] = ""
    if reasoning_shown and result.reasoning:
        message["reasoning_content"] = result.reasoning
        message["reasoning"] = result.reasoning
    return message


class ChatServing:
    """Chat completions over the served models."""

    def __init__(
        self, manager: ModelManager, metrics: Metrics, settings: ServerSettings | None = None
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.settings = settings

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        params = body.to_sampling_params()
        plans: list[ChatPlan] = []

        def make_reqs(lease: Lease) -> list[GenerationRequest]:
            info = lease.engine.info
            plan = plan_chat(
                body,
                params,
                template=info.chat_template,
                bos_token=info.bos_token,
                eos_token=info.eos_token,
                settings=self.settings,
                render=lease.engine.render_chat,
            )
            plans.append(plan)
            return [
                GenerationRequest(
                    prompt=plan.prompt, params=seeded(plan.params, i), parse_special=True
                )
                for i in range(body.n)
            ]

        generation = await start_generation(self.manager, self.metrics, body.model, make_reqs)
        plan = plans[-1]
        rid, created = new_id("chatcmpl"), int(time.time())
        if body.stream:
            return sse_response(self._chat_stream(body, plan, generation, rid, created))
        want_logprobs = body.logprobs

        def on_event(index: int, event: TokenEvent) -> None:
            if want_logprobs and event.token_id is not None:
                generation.choices[index].logprobs.append(chat_logprob(generation, event))

        await collect(request, generation, on_event)
        choices = []
        for c in generation.choices:
            text = "".join(c.text)
            if not plan.parser.active:
                result = cf.ParseResult(text, "", [])
            else:
                result = plan.parser.parse(text)
            result = cf.ParseResult(
                result.content,
                result.reasoning,
                [
                    cf.ToolCall(t.name, t.arguments, t.id or plan.parser.fmt.new_call_id())
                    for t in result.tool_calls
                ],
            )
            finish = c.finish_reason
            if result.tool_calls and finish == "stop":
                finish = "tool_calls"
            choices.append(
                {
                    "index": c.index,
                    "message": message_of(result, reasoning_shown=plan.parser.split_thinking),
                    "logprobs": {"content": c.logprobs} if want_logprobs else None,
                    "finish_reason": finish,
                }
            )
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": generation.lease.name,
                "choices": choices,
                "usage": generation.usage(shared_prompt=True),
            }
        )

    async def _chat_stream(
        self,
        body: ChatCompletionRequest,
        plan: ChatPlan,
        generation: Generation,
        rid: str,
        created: int,
    ) -> AsyncIterator[bytes]:
        usage_opt = body.include_usage()
        head = {"id": rid, "object": "chat.completion.chunk", "created": created}
        head["model"] = generation.lease.name
        streams = [cf.StreamParser(plan.parser) for _ in generation.choices]

        def chunk(
            index: int, delta: dict[str, Any], logprobs: Any = None, finish: Any = None
        ) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            payload: dict[str, Any] = {**head, "choices": [choice]}
            if usage_opt:
                payload["usage"] = None
            return sse_event(payload)

        def delta_of(d: cf.StreamDelta) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if d.reasoning:
                out["reasoning_content"] = d.reasoning
                out["reasoning"] = d.reasoning
            if d.content:
                out["content"] = d.content
            if d.tool_calls:
                out["tool_calls"] = [t.to_openai() for t in d.tool_calls]
            return out

        try:
            for c in generation.choices:
                yield chunk(c.index, {"role": "assistant", "content": ""})
            async for index, event in generation.events():
                logprobs = None
                if body.logprobs and event.token_id is not None:
                    logprobs = {"content": [chat_logprob(generation, event)]}
                if not plan.parser.active:
                    d = cf.StreamDelta(content=event.text)
                else:
                    d = streams[index].feed(event.text) if event.text else cf.StreamDelta()
                if d or logprobs:
                    yield chunk(index, delta_of(d), logprobs)
                if event.finish_reason is not None and not plan.parser.active:
                    yield chunk(index, {}, None, event.finish_reason)
                elif event.finish_reason is not None:
                    last, result = streams[index].finish()
                    if last:
                        yield chunk(index, delta_of(last))
                    finish: str = event.finish_reason
                    if result.tool_calls and finish == "stop":
                        finish = "tool_calls"
                    yield chunk(index, {}, None, finish)
            if usage_opt:
                yield sse_event(
                    {**head, "choices": [], "usage": generation.usage(shared_prompt=True)}
                )
        finally:
            generation.close()
