"""The FastAPI application factory. Runtime state is built in the lifespan and kept on
``app.state``: settings, model manager, metrics, serving layer, readiness callback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ggufworker import __version__
from ggufworker.config import ServerSettings
from ggufworker.server.anthropic.router import router as anthropic_router
from ggufworker.server.core.auth import APIKeyMiddleware
from ggufworker.server.core.chat import ChatPipeline
from ggufworker.server.core.errors import install_error_handlers
from ggufworker.server.core.limits import BodyLimitMiddleware
from ggufworker.server.core.loading import load_engine, resolve_source
from ggufworker.server.core.metrics import Metrics, RequestMetricsMiddleware
from ggufworker.server.core.models import EngineFactory, ModelManager, Resolver
from ggufworker.server.core.openapi import install_openapi
from ggufworker.server.core.router_metrics import RouterGaugeCollector
from ggufworker.server.core.routes import public
from ggufworker.server.core.routes import router as lifecycle_router
from ggufworker.server.core.rpc_split import RpcCollector
from ggufworker.server.core.slots_router import router as slots_router
from ggufworker.server.lifecycle.router import router as models_router
from ggufworker.server.lora.router import LoraCollector
from ggufworker.server.lora.router import router as lora_router
from ggufworker.server.ollama.router import router as ollama_router
from ggufworker.server.openai.responses.router import router as responses_router
from ggufworker.server.openai.responses.serving import ResponsesServing
from ggufworker.server.openai.router import router as openai_router
from ggufworker.server.openai.serving_chat import ChatServing
from ggufworker.server.openai.serving_completion import CompletionServing
from ggufworker.server.rerank.router import router as rerank_router
from ggufworker.server.ui.router import router as ui_router
from ggufworker.server.worker.router import router as worker_router
from ggufworker.server.worker.serving import ReadinessCallback


def create_app(
    settings: ServerSettings,
    *,
    engine_factory: EngineFactory = load_engine,
    resolver: Resolver = resolve_source,
) -> FastAPI:
    """Build the server app.

    Args:
        settings: resolved server settings.
        engine_factory: loads one model (tests pass a fake engine).
        resolver: turns a model name or path into a GGUF path.

    Returns:
        The app; models load in its lifespan (start-up) and close at shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager = ModelManager(settings, engine_factory=engine_factory, resolver=resolver)
        metrics = app.state.metrics
        app.state.manager = manager
        # the one chat pipeline; every chat-shaped surface translates onto it
        app.state.pipeline = ChatPipeline(manager, metrics, settings)
        app.state.chat = ChatServing(app.state.pipeline, settings)
        app.state.completion = CompletionServing(manager, metrics)
        # the Responses API keeps stored responses in SQLite under the home
        app.state.responses = ResponsesServing.from_settings(app.state.pipeline, settings)
        callback = None
        if settings.callback_url:
            callback = ReadinessCallback(
                settings.callback_url,
                settings.worker_id or "ggufworker",
                settings.base_url(),
                attempts=settings.callback_attempts,
            )
            manager.on_ready.append(callback.on_ready)
        app.state.callback = callback
        await manager.start()
        try:
            yield
        finally:
            if callback is not None:
                await callback.close()
            await app.state.responses.close()
            await manager.close()

    app = FastAPI(title="ggufworker", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    # built with the app (not in the lifespan) so the request counter wraps every route;
    # it reads the model manager from app.state at scrape time
    app.state.metrics = Metrics(lambda: getattr(app.state, "manager", None))

    def current() -> ModelManager | None:
        return getattr(app.state, "manager", None)

    app.state.metrics.registry.register(LoraCollector(current))
    # vLLM-named gauges for Kubernetes routers (llm-d, Gateway API Inference Extension)
    app.state.metrics.registry.register(RouterGaugeCollector(current))
    # the llama.cpp RPC workers of split models, up or down
    app.state.metrics.registry.register(RpcCollector(lambda: getattr(app.state, "manager", None)))
    install_error_handlers(app)
    install_openapi(app)  # every route's real statuses and content types (server/openapi.py)
    # one router per API surface over the shared core; same keys, limits and metrics for all
    routers = [
        public,
        lifecycle_router,
        openai_router,
        worker_router,
        ollama_router,
        anthropic_router,
        responses_router,
        rerank_router,
        models_router,
        lora_router,
        ui_router,
        slots_router,
    ]
    for r in routers:
        app.include_router(r)
    endpoints = {getattr(route, "path", "") for r in routers for route in r.routes}
    # add_middleware wraps: the last added runs first. Order of a request: metrics, CORS,
    # API key, body limit, then the routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(APIKeyMiddleware, keys=settings.api_keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    # outermost, so 413s and CORS rejections are counted too
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics, endpoints=endpoints)
    return app
