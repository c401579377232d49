"""Serving logic of Ollama's generation endpoints: /api/chat, /api/generate, /api/embed and
/api/embeddings, over the same engines as /v1.

Responses stream as NDJSON by default; the last chunk carries ``done``, ``done_reason`` and the
measured durations in nanoseconds. A request's ``keep_alive`` sets how long its model stays
loaded once idle (``0``: unloaded before the final chunk is sent).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ggufworker import chat_formats as cf
from ggufworker.config import ServerSettings
from ggufworker.engine.types import GenerationRequest, SamplingParams
from ggufworker.errors import ContextLengthExceededError, InvalidRequestError
from ggufworker.server.core import embeddings as core_embeddings
from ggufworker.server.core.generation import Generation, start_generation
from ggufworker.server.core.metrics import Metrics
from ggufworker.server.core.models import Lease, ModelManager, ServedModel
from ggufworker.server.ollama.chat import ChatPlan, plan_chat
from ggufworker.server.ollama.facts import fim_ids, now_iso
from ggufworker.server.ollama.protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    GenerationFields,
)
from ggufworker.server.ollama.stream import NS, Timings, ndjson_response

logger = logging.getLogger(__name__)


def _fit_context(tokens: list[int], params: SamplingParams, limit: int | None) -> SamplingParams:
    """Cap generation so prompt plus output stay within ``num_ctx`` (when the client set it)."""
    if limit is None:
        return params
    room = limit - len(tokens)
    if room < 1:
        raise ContextLengthExceededError(
            f"the prompt is {len(tokens)} tokens; options.num_ctx is {limit}", param="options"
        )
    if params.max_tokens is None or params.max_tokens > room:
        return replace(params, max_tokens=room)
    return params


class OllamaServing:
    """The Ollama API's generation endpoints over the served models."""

    def __init__(
        self, manager: ModelManager, metrics: Metrics, settings: ServerSettings | None = None
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.settings = settings

    # --- shared ----------------------------------------------------------------------------

    def _engines(self, model: ServedModel) -> list[ServedModel]:
        """Every engine of a model's name: to a client, the generation engine and the embedding
        engine of one name are one model (as in Ollama)."""
        return [m for m in self.manager.all_models() if m.spec.name == model.spec.name]

    def _set_keep_alive(self, model: ServedModel, keep: float | None) -> None:
        # a request without keep_alive returns the model to the server's setting, as in Ollama
        for m in self._engines(model):
            m.keep_alive = keep

    async def _unload(self, model: ServedModel) -> None:
        for m in self._engines(model):
            await self.manager.unload(m)

    def _prepare(self, body: GenerationFields, images: bool) -> tuple[ServedModel, float | None]:
        """Look the model up (404 first), check what the request asks of it, apply keep_alive."""
        model = self.manager.lookup(body.model)
        keep = body.keep_alive_s()
        if images:
            raise InvalidRequestError(
                f"model {body.model!r} does not support images (text-only model)", param="images"
            )
        self._set_keep_alive(model, keep)
        return model, keep

    async def _load_only(
        self, body: GenerationFields, model: ServedModel, keep: float | None, key: str
    ) -> Response:
        """An empty chat or prompt: load the model (or, with keep_alive 0, unload it)."""
        timings = Timings()
        if keep == 0:
            await self._unload(model)
            reason = "unload"
        else:
            lease = await self.manager.acquire(body.model)
            lease.release()
            timings.load = time.perf_counter() - timings.started
            reason = "load"
        empty: Any = {"role": "assistant", "content": ""} if key == "message" else ""
        chunk = {
            "model": body.model,
            "created_at": now_iso(),
            key: empty,
            "done": True,
            "done_reason": reason,
        }
        return JSONResponse(chunk)

    async def _start(
        self, body: GenerationFields, build: Any, timings: Timings
    ) -> tuple[Generation, list[int]]:
        prompt_ids: list[int] = []

        def make_reqs(lease: Lease) -> list[GenerationRequest]:
            tokens, params = build(lease)
            prompt_ids.extend(tokens)
            timings.load = time.perf_counter() - timings.started
            timings.submitted = time.perf_counter()
            return [GenerationRequest(prompt=tokens, params=params)]

        generation = await start_generation(self.manager, self.metrics, body.model, make_reqs)
        return generation, prompt_ids

    async def _finish(self, generation: Generation, model: ServedModel, keep: float | None) -> None:
        generation.close()
        if keep == 0:
            await self._unload(model)

    # --- /api/chat -------------------------------------------------------------------------

    async def chat(self, body: ChatRequest, request: Request) -> Response:
        model, keep = self._prepare(body, any(m.images for m in body.messages))
        if not body.messages:
            return await self._load_only(body, model, keep, "message")
        messages = [m.to_template() for m in body.messages]
        base = body.to_sampling_params()
        num_ctx = body.num_ctx()
        plans: list[ChatPlan] = []

        def build(lease: Lease) -> tuple[list[int], SamplingParams]:
            plan = plan_chat(
                messages,
                base,
                name=body.model,
                info=lease.engine.info,
                tools=body.tools,
                tool_choice=body.effective_tool_choice(),
                think=body.think,
                tool_call_format=self._tool_call_format(),
            )
            plans.append(plan)
            tokens = lease.engine.tokenize(plan.prompt, add_special=True, parse_special=True)
            return tokens, _fit_context(tokens, plan.params, num_ctx)

        timings = Timings()
        generation, _ = await self._start(body, build, timings)
        plan = plans[-1]
        if body.stream:
            return ndjson_response(self._chat_stream(body, generation, model, keep, plan, timings))
        try:
            result, reason, _ = await self._collect(generation, plan, timings)
        finally:
            await self._finish(generation, model, keep)
        return JSONResponse(
            {
                "model": body.model,
                "created_at": now_iso(),
                "message": plan.message(result),
                "done": True,
                "done_reason": reason,
                **timings.report(),
            }
        )

    def _tool_call_format(self) -> str | None:
        return getattr(self.settings, "tool_call_format", None) if self.settings else None

    async def _collect(
        self, generation: Generation, plan: ChatPlan | None, timings: Timings
    ) -> tuple[cf.ParseResult, str, list[int]]:
        parts: list[str] = []
        ids: list[int] = []
        reason = "stop"
        async for _, event in generation.events():
            timings.see(event)
            parts.append(event.text)
            if event.token_id is not None:
                ids.append(event.token_id)
            if event.finish_reason is not None:
                reason = event.finish_reason
        text = "".join(parts)
        result = plan.parser.parse(text) if plan is not None else cf.ParseResult(text, "", [])
        return result, reason, ids

    async def _parsed(
        self,
        generation: Generation,
        plan: ChatPlan | None,
        timings: Timings,
        ids: list[int],
        outcome: dict[str, Any],
    ) -> AsyncIterator[cf.StreamDelta]:
        """Deltas of content and reasoning as they can be shown; the whole parse (with its
        calls) and the done reason land in ``outcome`` at the end."""
        stream = cf.StreamParser(plan.parser) if plan is not None else None
        outcome["reason"] = "stop"
        async for _, event in generation.events():
            timings.see(event)
            if event.token_id is not None:
                ids.append(event.token_id)
            if event.finish_reason is not None:
                outcome["reason"] = event.finish_reason
            if not event.text:
                continue
            if stream is None:
                yield cf.StreamDelta(content=event.text)
                continue
            delta = stream.feed(event.text)
            if delta.content or delta.reasoning:
                yield delta
        if stream is not None:
            last, outcome["result"] = stream.finish()
            if last.content or last.reasoning:
                yield last

    async def _chat_stream(
        self,
        body: ChatRequest,
        generation: Generation,
        model: ServedModel,
        keep: float | None,
        plan: ChatPlan,
        timings: Timings,
    ) -> AsyncIterator[dict[str, Any]]:
        outcome: dict[str, Any] = {}
        try:
            async for delta in self._parsed(generation, plan, timings, [], outcome):
                message: dict[str, Any] = {"role": "assistant", "content": delta.content}
                if delta.reasoning and plan.show_thinking:
                    message["thinking"] = delta.reasoning
                elif not delta.content:
                    continue
                yield self._chunk(body, "message", message)
        finally:
            await self._finish(generation, model, keep)
        calls = plan.message(cf.ParseResult("", "", outcome["result"].tool_calls))
        if "tool_calls" in calls:  # a call arrives whole, in one chunk, as in Ollama
            yield self._chunk(body, "message", calls)
        yield {
            **self._chunk(body, "message", {"role": "assistant", "content": ""}),
            "done": True,
            "done_reason": outcome["reason"],
            **timings.report(),
        }

    @staticmethod
    def _chunk(body: GenerationFields, key: str, value: Any) -> dict[str, Any]:
        return {"model": body.model, "created_at": now_iso(), key: value, "done": False}

    # --- /api/generate ---------------------------------------------------------------------

    async def generate(self, body: GenerateRequest, request: Request) -> Response:
        model, keep = self._prepare(body, bool(body.images))
        if body.template:
            raise InvalidRequestError(
                "template overrides (Go templates) are not supported; the model's own chat "
                "template is used, or send raw=true with a formatted prompt",
                param="template",
            )
        if not body.prompt and not body.suffix and not body.context:
            return await self._load_only(body, model, keep, "response")
        base = body.to_sampling_params()
        num_ctx = body.num_ctx()
        plans: list[ChatPlan | None] = []

        def build(lease: Lease) -> tuple[list[int], SamplingParams]:
            engine = lease.engine
            tokens = list(body.context or [])
            params, plan = base, None
            if body.suffix:
                tokens += _fim_prompt(engine, body.model, body.prompt, body.suffix, not tokens)
            elif body.raw:
                tokens += engine.tokenize(body.prompt, add_special=not tokens, parse_special=True)
            else:
                messages = [{"role": "user", "content": body.prompt}]
                if body.system:
                    messages.insert(0, {"role": "system", "content": body.system})
                plan = plan_chat(
                    messages, base, name=body.model, info=engine.info, think=body.think
                )
                params = plan.params
                tokens += engine.tokenize(plan.prompt, add_special=not tokens, parse_special=True)
            plans.append(plan)
            return tokens, _fit_context(tokens, params, num_ctx)

        timings = Timings()
        generation, prompt_ids = await self._start(body, build, timings)
        plan = plans[-1]
        if body.stream:
            return ndjson_response(
                self._generate_stream(body, generation, model, keep, plan, prompt_ids, timings)
            )
        try:
            result, reason, out_ids = await self._collect(generation, plan, timings)
        finally:
            await self._finish(generation, model, keep)
        answer: dict[str, Any] = {
            "model": body.model,
            "created_at": now_iso(),
            "response": result.content,
        }
        if plan is not None and plan.show_thinking and result.reasoning:
            answer["thinking"] = result.reasoning
        return JSONResponse(
            {
                **answer,
                "done": True,
                "done_reason": reason,
                "context": prompt_ids + out_ids,
                **timings.report(),
            }
        )

    async def _generate_stream(
        self,
        body: GenerateRequest,
        generation: Generation,
        model: ServedModel,
        keep: float | None,
        plan: ChatPlan | None,
        prompt_ids: list[int],
        timings: Timings,
    ) -> AsyncIterator[dict[str, Any]]:
        out_ids: list[int] = []
        outcome: dict[str, Any] = {}
        show = plan is not None and plan.show_thinking
        try:
            async for delta in self._parsed(generation, plan, timings, out_ids, outcome):
                chunk = self._chunk(body, "response", delta.content)
                if delta.reasoning and show:
                    chunk["thinking"] = delta.reasoning
                elif not delta.content:
                    continue
                yield chunk
        finally:
            await self._finish(generation, model, keep)
        yield {
            **self._chunk(body, "response", ""),
            "done": True,
            "done_reason": outcome["reason"],
            "context": prompt_ids + out_ids,
            **timings.report(),
        }

    # --- /api/embed, /api/embeddings -------------------------------------------------------

    async def embed(self, body: EmbedRequest) -> dict[str, Any]:
        texts = body.texts()
        started = time.perf_counter()
        vectors, prompt_tokens, load_s = await self._embed(
            body.model, body.keep_alive, texts, truncate=body.truncate, dimensions=body.dimensions
        )
        return {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": int((time.perf_counter() - started) * NS),
            "load_duration": int(load_s * NS),
            "prompt_eval_count": prompt_tokens,
        }

    async def embeddings(self, body: EmbeddingsRequest) -> dict[str, Any]:
        if not body.prompt:
            return {"embedding": []}
        vectors, _, _ = await self._embed(body.model, body.keep_alive, [body.prompt])
        return {"embedding": vectors[0]}

    async def _embed(
        self,
        name: str,
        keep_alive: Any,
        texts: list[str],
        *,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> tuple[list[list[float]], int, float]:
        from ggufworker.server.ollama.protocol import parse_keep_alive

        model = self.manager.lookup(name, embedding=True)
        self._set_keep_alive(model, parse_keep_alive(keep_alive))
        started = time.perf_counter()
        lease = await self.manager.acquire(name, embedding=True)
        load_s = time.perf_counter() - started
        try:
            result = await core_embeddings.embed(
                lease.engine, texts, truncate=truncate, dimensions=dimensions
            )
        finally:
            lease.release()
        if model.keep_alive == 0:
            await self._unload(model)
        return result.vectors, result.prompt_tokens, load_s


def _fim_prompt(engine: Any, name: str, prompt: str, suffix: str, add_bos: bool) -> list[int]:
    """Prefix-suffix-middle token layout for a ``suffix`` request.

    Raises:
        InvalidRequestError: the model has no fill-in-the-middle tokens.
    """
    from ggufworker.server.ollama.facts import typed

    meta = {k: typed(v) for k, v in engine.info.metadata.items()}

    def lookup(text: str) -> int | None:
        ids = engine.tokenize(text, add_special=False, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    fim = fim_ids(meta, lookup)
    if fim is None:
        raise InvalidRequestError(
            f"{name!r} does not support insert (no fill-in-the-middle tokens)", param="suffix"
        )
    pre, suf, mid = fim
    head = engine.tokenize("", add_special=True) if add_bos else []
    body = engine.tokenize(prompt, add_special=False)
    tail = engine.tokenize(suffix, add_special=False)
    return [*head, pre, *body, suf, *tail, mid]
