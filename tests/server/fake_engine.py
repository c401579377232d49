"""A small stand-in for the engine, with the same interface, for routing and protocol tests.

Tokens are characters; the answer to a prompt is the prompt's last 40 characters reversed, then
end-of-sequence. That is enough to check shapes, usage counts, stop strings, limits and
cancellation without llama.cpp. Every behaviour is also tested end to end with a real model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufworker.engine.embedding import EmbedResult, Pooling
from ggufworker.engine.types import GenerationRequest, ModelInfo, TokenEvent, TopLogprob, Usage
from ggufworker.errors import ContextLengthExceededError, GenerationError, QueueFullError


@dataclass(frozen=True)
class FakeStats:
    n_parallel: int
    busy_slots: int
    queue_depth: int
    max_queue: int
    spec_drafts: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    spec_accepted_per_pos: tuple[int, ...] = ()


def fake_answer(prompt: str) -> str:
    return prompt[-40:][::-1]


class FakeHandle:
    def __init__(self, engine: FakeEngine, prompt: str, req: GenerationRequest) -> None:
        self.engine = engine
        self.prompt_tokens = len(prompt)
        self.answer = fake_answer(prompt)
        self.req = req
        self.cancelled = False
        self.finished = False

    def cancel(self) -> None:
        if not self.finished:
            self.cancelled = True
            with self.engine.lock:
                self.engine.active.discard(self)

    async def __aiter__(self) -> Any:
        params = self.req.params
        limit = params.max_tokens or len(self.answer)
        out = ""
        try:
            for i, ch in enumerate(self.answer[:limit]):
                await asyncio.sleep(self.engine.delay)
                if self.cancelled:
                    return
                if self.engine.fail_after is not None and i >= self.engine.fail_after:
                    raise GenerationError("sequence failed")
                out += ch
                hit = next((s for s in params.stop if s in out), None)
                if hit:
                    yield TokenEvent(
                        text="",
                        finish_reason="stop",
                        usage=Usage(self.prompt_tokens, i + 1),
                    )
                    return
                top = ()
                if params.logprobs is not None:
                    top = tuple(
                        TopLogprob(ord(c), c, -0.1 * (k + 1))
                        for k, c in enumerate("abc"[: params.logprobs])
                    )
                last = i == min(limit, len(self.answer)) - 1
                reason = None if not last else ("length" if limit < len(self.answer) else "stop")
                yield TokenEvent(
                    text=ch,
                    token_id=ord(ch),
                    logprob=-0.5,
                    top_logprobs=top,
                    finish_reason=reason,
                    usage=Usage(self.prompt_tokens, i + 1) if reason else None,
                )
                if reason:
                    return
            yield TokenEvent(text="", finish_reason="stop", usage=Usage(self.prompt_tokens, 0))
        finally:
            self.finished = True
            with self.engine.lock:
                self.engine.active.discard(self)


class FakeEngine:
    def __init__(
        self,
        name: str,
        *,
        n_parallel: int = 2,
        max_queue: int = 2,
        n_ctx: int = 512,
        embedding: bool = False,
    ) -> None:
        self.info = ModelInfo(
            path=f"/fake/{name}.gguf",
            name=name,
            architecture="fake",
            n_ctx_train=n_ctx,
            n_ctx=n_ctx,
            n_parallel=n_parallel,
            n_vocab=256,
            n_embd=8,
            n_params=1,
            size_bytes=1,
            quantization="F32",
            chat_template=None,
            bos_token=None,
            eos_token=None,
            eos_token_ids=(),
            gpu_layers=0,
            backend="fake",
        )
        self.n_parallel = n_parallel
        self.max_queue = max_queue
        self.embedding = embedding
        # what a real embedding engine reads from its GGUF (engine/embedding.py)
        self.pooling = Pooling("mean", normalize=False, n_out=4, rerank_template=None)
        self.delay = 0.002
        self.fail_after: int | None = None
        self.lock = threading.Lock()
        self.active: set[FakeHandle] = set()
        self.submitted: list[GenerationRequest] = []
        self.closed = False
        self.last_tools: Any = None

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def render_chat(
        self, messages: list[dict[str, Any]], tools: Any = None, add_generation_prompt: bool = True
    ) -> str:
        self.last_tools = tools
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def submit(self, req: GenerationRequest) -> FakeHandle:
        prompt = req.prompt if isinstance(req.prompt, str) else self.detokenize(req.prompt)
        if len(prompt) > self.info.n_ctx:
            raise ContextLengthExceededError(
                f"prompt has {len(prompt)} tokens; the context holds {self.info.n_ctx}"
            )
        with self.lock:
            if len(self.active) >= self.n_parallel + self.max_queue:
                raise QueueFullError("queue full")
            handle = FakeHandle(self, prompt, req)
            self.active.add(handle)
        self.submitted.append(req)
        return handle

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(t)), 1.0, 0.5, 0.25] for t in texts]

    def submit_embeddings(
        self, inputs: list[Any], *, truncate: bool = False
    ) -> concurrent.futures.Future[EmbedResult]:
        fut: concurrent.futures.Future[EmbedResult] = concurrent.futures.Future()
        fut.set_result(
            EmbedResult(self.embed([str(x) for x in inputs]), sum(len(x) for x in inputs))
        )
        return fut

    def stats(self) -> FakeStats:
        busy = min(len(self.active), self.n_parallel)
        return FakeStats(self.n_parallel, busy, len(self.active) - busy, self.max_queue)

    def close(self) -> None:
        self.closed = True


class FakeFactory:
    """engine_factory for create_app: records the engines it made."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.engines: list[FakeEngine] = []
        self.loads = 0

    def __call__(self, path: Path, spec: Any, settings: Any) -> FakeEngine:
        self.loads += 1
        engine = FakeEngine(spec.name, embedding=spec.embedding, **self.kwargs)
        self.engines.append(engine)
        return engine


def fake_resolver(source: str, settings: Any) -> Path:
    return Path(f"/fake/{source}.gguf")
