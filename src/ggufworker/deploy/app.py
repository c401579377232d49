"""The Ray Serve application: the server as ingress, engine replicas as deployments.

- ``ggufworker`` (the ingress deployment): the whole FastAPI app, every API surface, auth,
  limits and ``/metrics``, built by :func:`~ggufworker.server.app.create_app` with an engine
  factory that hands out :class:`~ggufworker.deploy.remote.RemoteEngine`\\ s;
- ``engine-NAME`` (one deployment per served model): :class:`~ggufworker.deploy.replica.
  EngineReplica` replicas, each asking Ray for ``replica_cpus`` CPUs and ``replica_gpus``
  GPUs, a fixed count or autoscaled between bounds, routed by
  :class:`~ggufworker.deploy.router.PrefixAffinityRouter`.

Run it with ``serve run ggufworker.deploy:app`` (arguments or a config file, see
docs/DEPLOY.md) or ``ggufworker serve --ray ADDRESS --replicas N``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve import Application

from ggufworker.config import ServerSettings
from ggufworker.deploy.remote import RemoteEngine
from ggufworker.deploy.replica import EngineReplica
from ggufworker.deploy.router import DEFAULT_MEMORY
from ggufworker.errors import ModelNotFoundError
from ggufworker.server.core.replicas import DEFAULT_AFFINITY
from ggufworker.settings_sources import resolve_settings

logger = logging.getLogger(__name__)

APP_NAME = "ggufworker"
#: the engine deployments' request router (Ray imports it where the handles live)
ROUTER = "ggufworker.deploy.router:PrefixAffinityRouter"


class DeployOptions(BaseModel):
    """The application's arguments (``serve run ggufworker.deploy:app KEY=VALUE`` or the
    ``args`` of an application in a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="ggufworker server settings as in a config file (model, ctx_size, parallel, "
        "threads, api_keys, ...); GGUFWORKER_* env vars apply too",
    )
    config_file: str | None = Field(
        default=None, description="a ggufworker settings file read on the node that deploys"
    )
    replicas: int | None = Field(
        default=None, ge=1, description="replicas per generation model (default: replicas setting)"
    )
    min_replicas: int | None = Field(
        default=None, ge=0, description="autoscaling lower bound (with max_replicas)"
    )
    max_replicas: int | None = Field(
        default=None, ge=1, description="autoscaling upper bound: set it to autoscale"
    )
    replica_cpus: float = Field(default=1.0, ge=0, description="CPUs Ray reserves per replica")
    replica_gpus: float = Field(default=0.0, ge=0, description="GPUs Ray reserves per replica")
    ingress_replicas: int = Field(default=1, ge=1, description="replicas of the HTTP ingress")
    ingress_cpus: float = Field(default=0.0, ge=0, description="CPUs reserved per ingress")
    affinity: float = Field(
        default=DEFAULT_AFFINITY,
        ge=0,
        le=1,
        description="share of a prompt a replica's cached prefix must cover to win on it",
    )
    health_check_period_s: float = Field(
        default=10.0, gt=0, description="how often Ray checks each replica"
    )

    @field_validator("settings", mode="before")
    @classmethod
    def _settings_json(cls, value: Any) -> Any:
        """``settings='{"models": [...]}'`` on ``serve run``'s command line is a JSON string."""
        return json.loads(value) if isinstance(value, str) else value

    def server_settings(self) -> ServerSettings:
        return resolve_settings(self.settings, config_file=self.config_file)


def deployment_name(model: str) -> str:
    """The engine deployment of a served model (Ray names: no slashes or colons)."""
    return "engine-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model)


@serve.ingress()
class Ingress:
    """The server app, its engines remote (see the module doc)."""

    def __init__(
        self, settings: ServerSettings, engines: dict[str, Any], replicas: dict[str, int]
    ) -> None:
        self._settings = settings
        self._engines = engines
        self._replicas = replicas

    def __serve_build_asgi_app__(self) -> Any:
        from ggufworker.server.app import create_app

        return create_app(self._settings, engine_factory=self._engine)

    def _engine(self, path: Path, spec: Any, settings: ServerSettings) -> RemoteEngine:
        handle = self._engines.get(spec.name)
        if handle is None:
            raise ModelNotFoundError(
                f"model {spec.name!r} has no Ray deployment: only the deployed models are served"
            )
        return RemoteEngine.connect(handle, str(path), replicas=self._replicas[spec.name])


def build_app(options: DeployOptions, *, settings: ServerSettings | None = None) -> Application:
    """The Serve application for ``options`` (see the module doc).

    Args:
        options: the deployment's arguments.
        settings: resolved server settings (default: from ``options``).

    Raises:
        pydantic.ValidationError: the settings are invalid.
    """
    settings = settings or options.server_settings()
    count = options.replicas or settings.replicas
    engines: dict[str, Any] = {}
    replicas: dict[str, int] = {}
    models = [(s, False) for s in settings.served_models()]
    models += [(s, True) for s in settings.embedding_models]
    for source, embedding in models:
        from ggufworker.server.core.models import served_name

        name = served_name(source)
        n = 1 if embedding else count
        scaling: dict[str, Any] = {"num_replicas": n}
        if options.max_replicas is not None and not embedding:
            low = options.min_replicas if options.min_replicas is not None else 1
            scaling = {
                "autoscaling_config": {
                    "min_replicas": low,
                    "initial_replicas": max(low, min(n, options.max_replicas)),
                    "max_replicas": max(low, options.max_replicas),
                    "target_ongoing_requests": settings.parallel,
                }
            }
        slots = 1 if embedding else settings.parallel
        deployment = _deployment(EngineReplica).options(
            name=deployment_name(name),
            ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
            max_ongoing_requests=slots + settings.max_queue,
            health_check_period_s=options.health_check_period_s,
            request_router_config={
                "request_router_class": ROUTER,
                "request_router_kwargs": {
                    "slots": slots,
                    "affinity": options.affinity,
                    "memory": DEFAULT_MEMORY,
                },
            },
            **scaling,
        )
        engines[name] = deployment.bind(source, name, settings, embedding)
        replicas[name] = n
    ingress = _deployment(Ingress).options(
        name=APP_NAME,
        num_replicas=options.ingress_replicas,
        ray_actor_options={"num_cpus": options.ingress_cpus},
        # the HTTP requests one ingress holds: every replica's slots and queues
        max_ongoing_requests=max(
            100, sum(replicas.values()) * (settings.parallel + settings.max_queue)
        ),
    )
    return ingress.bind(settings, engines, replicas)


def _deployment(cls: type) -> Any:
    """``serve.deployment(cls)`` (a Deployment to call ``.options`` on; typed loosely by Ray)."""
    return serve.deployment(cls)


def app(args: dict[str, Any]) -> Application:
    """``serve run ggufworker.deploy:app``'s application builder: its arguments (``KEY=VALUE``
    on the command line, ``args`` in a config file) are :class:`DeployOptions`' fields.

    Raises:
        pydantic.ValidationError: an unknown or invalid argument.
    """
    return build_app(
        args if isinstance(args, DeployOptions) else DeployOptions.model_validate(args)
    )


def run_on_ray(settings: ServerSettings, *, address: str) -> None:
    """``ggufworker serve --ray ADDRESS``: deploy on a running Ray cluster and serve HTTP on
    ``settings.host:settings.port`` through Ray Serve's proxy until interrupted (then the
    application is deleted from the cluster).

    One replica per ``--replicas`` of each model, each reserving ``--threads`` CPUs (one if
    unset) or, on a cluster with GPUs and ``--gpu-layers`` not 0, one GPU.
    """
    import ray

    ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING)
    gpus = float(ray.cluster_resources().get("GPU", 0)) > 0 and settings.gpu_layers != 0
    options = DeployOptions(
        replicas=settings.replicas,
        replica_cpus=float(settings.threads or 1),
        replica_gpus=1.0 if gpus else 0.0,
    )
    serve.start(http_options={"host": settings.host, "port": settings.port})
    logger.info("deploying %s on Ray at %s", APP_NAME, address)
    try:
        serve.run(
            build_app(options, settings=settings), name=APP_NAME, route_prefix="/", blocking=True
        )
    finally:  # interrupted: take the application down with the command (serve deploy keeps one)
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
