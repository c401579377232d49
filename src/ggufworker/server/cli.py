"""`ggufworker serve`: flags derived from the settings class, then uvicorn."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ggufworker.settings_flags import add_settings_arguments, settings_from_args

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible HTTP API",
        description=(
            "Serve GGUF models over an OpenAI-compatible API with continuous batching. "
            "With no arguments: the registry's default model on 127.0.0.1:8080. "
            "Every flag can also be set by a GGUFWORKER_* env var or a config file; "
            "precedence: flags > env > config file > defaults."
        ),
    )
    add_settings_arguments(parser)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve settings and serve until interrupted."""
    import uvicorn

    from ggufworker.server.app import create_app
    from ggufworker.server.core.replicas import plan_placements

    settings = settings_from_args(args)
    if settings.ray:
        return _run_on_ray(settings)
    # GPU flags are checked against the devices before serving: a bad one is a start-up error
    # (one line, non-zero exit), not a model that fails to load later.
    plan_placements(settings)
    if settings.rpc:  # --rpc entries name served models and well-formed workers
        from ggufworker.server.core.rpc_split import rpc_assignments

        rpc_assignments(settings)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        logger.warning(
            "listening on %s without API keys: anyone who can reach it can use it", settings.host
        )
    app = create_app(settings)
    logger.info(
        "serving %s on %s",
        ", ".join(settings.served_models() + settings.embedding_models),
        settings.base_url(),
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
        log_config=None,
    )
    return 0


def _run_on_ray(settings: Any) -> int:
    """``--ray ADDRESS``: the same app on Ray Serve, engine replicas over the cluster."""
    from ggufworker.errors import InvalidRequestError

    try:
        from ggufworker.deploy import run_on_ray
    except ImportError as exc:
        raise InvalidRequestError(
            f"--ray needs Ray Serve: pip install 'ggufworker[ray]' ({exc})", param="ray"
        ) from None
    run_on_ray(settings, address=settings.ray)
    return 0
