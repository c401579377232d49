"""How a served model becomes a running engine: its GGUF found (a path, or a registry name
pulled on first use) and loaded with the server's engine settings. The model manager
(:mod:`ggufworker.server.core.models`) calls these; tests hand it fakes instead."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufworker.config import ServerSettings

if TYPE_CHECKING:
    from ggufworker.server.core.models import ModelSpec

__all__ = ["load_engine", "resolve_source", "rpc_endpoints", "rpc_placement"]


def resolve_source(source: str, settings: ServerSettings) -> Path:
    """A GGUF path for a registry name or path (pulls registry models on first use)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    from ggufworker.registry import pull

    return pull(source, home=settings.home, offline=settings.offline or None, progress=False)


def rpc_endpoints(spec: ModelSpec, settings: ServerSettings) -> tuple[str, ...]:
    """The RPC workers a served model is split over: its ``--rpc`` entry, else the ``rpc`` of
    its registry entry (none: it runs in this process)."""
    if spec.embedding:
        return ()
    from ggufworker.server.core.rpc_split import parse_endpoint, rpc_assignments

    if settings.rpc:
        named = rpc_assignments(settings).get(spec.name)
        if named:
            return named
    source = spec.source
    if "/" in source or source.endswith(".gguf"):
        return ()
    from ggufworker.errors import RegistryError
    from ggufworker.registry import load_registry

    try:
        entry = load_registry().get(source)
    except RegistryError:  # a broken models.yaml fails the pull with its own message
        return ()
    return tuple(parse_endpoint(e) for e in entry.rpc) if entry is not None else ()


def rpc_placement(settings: ServerSettings) -> dict[str, Any]:
    """Where an RPC-split model's layers go: ``--gpu-layers`` of them offloaded (the rest on
    this host's CPU), shared by ``--tensor-split`` over the workers' devices, then local GPUs."""
    return {
        "n_threads": settings.threads,
        "split_mode": settings.split_mode,
        "main_gpu": settings.main_gpu,
        "tensor_split": settings.tensor_split or None,
    }


def load_engine(path: Path, spec: ModelSpec, settings: ServerSettings) -> Any:
    """Load a GGUF into a batched engine with the server's engine settings (several
    engines behind one :class:`~ggufworker.server.core.replicas.ReplicaSet` with ``--replicas``)."""
    from ggufworker.engine import Engine
    from ggufworker.engine.prompt_cache import PromptCacheOptions
    from ggufworker.server.core.replicas import ReplicaSet, plan_placements

    placements = plan_placements(settings, embedding=spec.embedding)
    prompt_cache = PromptCacheOptions(
        ram_mib=0 if spec.embedding else settings.cache_ram,
        checkpoints=settings.ctx_checkpoints,
        checkpoint_every=settings.checkpoint_every,
        similarity=settings.slot_prompt_similarity,
        disk_dir=None if spec.embedding else settings.prompt_cache_dir,
        disk_mib=settings.cache_disk,
    )
    options: dict[str, Any] = dict(
        name=spec.name,
        n_ctx=settings.ctx_size,
        n_parallel=1 if spec.embedding else settings.parallel,
        n_batch=settings.batch_size,
        n_gpu_layers=settings.gpu_layers,
        flash_attn=settings.flash_attn,
        cache_type_k=settings.cache_type_k,
        cache_type_v=settings.cache_type_v,
        embedding=spec.embedding,
        max_queue=settings.max_queue,
        kv_layout=settings.kv_layout,
        backend_sampling=settings.backend_sampling,
        prompt_cache=prompt_cache,
    )
    if not spec.embedding and settings.spec_type not in ("none",):
        from ggufworker.engine.speculation import SpeculationOptions, spec_mode

        mode = spec_mode(settings.spec_type)
        draft = settings.spec_draft_model
        options["speculation"] = SpeculationOptions(
            mode=mode,
            draft_model=str(resolve_source(draft, settings)) if mode == "draft" and draft else None,
            n_max=settings.spec_draft_n_max,
            n_min=settings.spec_draft_n_min,
            adaptive=settings.spec_adaptive,
        )
    if spec.embedding:
        # sequences are cleared after each decode: one pool of a decode's tokens is enough
        options.update(
            n_ctx=settings.embedding_batch_size,
            n_batch=settings.embedding_batch_size,
            embed_seqs=settings.embedding_parallel,
            kv_layout="unified",
        )
    endpoints = rpc_endpoints(spec, settings)
    if endpoints:  # split over RPC workers: one engine, in a supervised child process
        from ggufworker.server.core.rpc_split import load_split

        return load_split(path, endpoints, {**options, **rpc_placement(settings)})
    if len(placements) > 1:
        return ReplicaSet.load(path, placements, n_threads=settings.threads, **options)
    return Engine.load(
        path, n_threads=settings.threads, **options, **placements[0].engine_options()
    )
