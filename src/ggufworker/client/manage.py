"""What ``ggufworker ps``, ``show``, ``rm``, ``stop`` and ``cp`` do, as library functions.

``ps``, ``stop`` and ``cp`` act on a running server. ``show`` and ``rm`` act on the server when
one is up (its cache, its loaded models) and on the local cache otherwise.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufworker import paths
from ggufworker.client.chat import model_summary
from ggufworker.client.server import ServerClient
from ggufworker.errors import InvalidRequestError, ModelNotFoundError

logger = logging.getLogger(__name__)


def _home(home: Path | None) -> Path:
    return Path(home).expanduser() if home is not None else paths.home_dir()


# --- ps -----------------------------------------------------------------------------------------


def running_models(client: ServerClient) -> list[dict[str, Any]]:
    """The server's models that are loaded or loading (``GET /models`` rows)."""
    return [r for r in client.models() if r["status"]["value"] in ("loaded", "loading")]


def until(expires_at: str | None, *, now: dt.datetime | None = None) -> str:
    """``Forever``, or how long until an idle model unloads, as ``ollama ps`` says it."""
    if not expires_at:
        return "Forever"
    when = dt.datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    left = (when - (now or dt.datetime.now(dt.timezone.utc))).total_seconds()
    if left < 60:
        return "Less than a minute from now"
    if left < 3600:
        minutes = round(left / 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''} from now"
    hours = round(left / 3600)
    return f"{hours} hour{'s' if hours != 1 else ''} from now"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def format_ps(rows: list[dict[str, Any]]) -> str:
    """``ollama ps``-style table: NAME, STATUS, SIZE, CONTEXT, ACTIVE, UNTIL."""
    from ggufworker.registry.listing import format_size

    table = [["NAME", "STATUS", "SIZE", "CONTEXT", "ACTIVE", "UNTIL"]]
    for r in rows:
        table.append(
            [
                r["id"] + (" (pinned)" if r.get("pinned") else ""),
                r["status"]["value"],
                format_size(r.get("memory") or r.get("size")),
                str(r.get("n_ctx") or ""),
                str(r.get("active", 0)),
                until(r.get("expires_at")) if r["status"]["value"] == "loaded" else "",
            ]
        )
    return _table(table)


# --- show ---------------------------------------------------------------------------------------


@dataclass
class ModelCard:
    """What ``ggufworker show`` prints about a model."""

    name: str
    summary: dict[str, str]
    capabilities: list[str] = field(default_factory=list)
    template: str = ""
    license: str = ""
    where: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.summary,
            "capabilities": self.capabilities,
            "template": self.template,
            "license": self.license,
            "source": self.where,
        }


def cached_file(name: str, *, home: Path | None = None) -> Path:
    """The GGUF file of a registry name, ``hf://`` reference or path, without downloading.

    Raises:
        ModelNotFoundError: not a known name, or not in the cache.
    """
    path = Path(name).expanduser()
    if name.endswith(".gguf") or path.is_file():
        if not path.is_file():
            raise ModelNotFoundError(f"no such GGUF file: {path}")
        return path
    from ggufworker.registry import cached, load_registry, resolve

    target = resolve(name, load_registry(), _home(home))
    found = cached(target)
    if found is None:
        raise ModelNotFoundError(
            f"model {name!r} is not in the cache (`ggufworker pull {name}` gets it)"
        )
    return found


def read_card(path: Path, *, name: str) -> ModelCard:
    """A model card from a GGUF file's metadata (gguf-py; no model is loaded)."""
    import gguf

    from ggufworker import chat_formats as cf

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key, value in reader.fields.items():
        if key.startswith("GGUF.") or not value.types:
            continue
        if value.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        meta[key] = value.contents()
    arch = str(meta.get("general.architecture", ""))
    n_params = meta.get("general.parameter_count")
    if not isinstance(n_params, int):
        n_params = sum(int(t.n_elements) for t in reader.tensors)
    quant = ""
    ftype = meta.get("general.file_type")
    if isinstance(ftype, int):
        try:
            quant = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_").replace("ALL_", "")
        except ValueError:
            quant = str(ftype)
    template = str(meta.get("tokenizer.chat_template") or "")
    summary = {
        "architecture": arch,
        "parameters": str(meta.get("general.size_label") or _count(n_params)),
        "context length": str(meta.get(f"{arch}.context_length", "")),
        "embedding length": str(meta.get(f"{arch}.embedding_length", "")),
        "quantization": quant,
    }
    return ModelCard(
        name=name,
        summary={k: v for k, v in summary.items() if v},
        capabilities=["completion", *cf.capabilities(template or None)],
        template=template,
        license=str(meta.get("general.license", "")),
        where=str(path),
    )


def _count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def describe(name: str, *, client: ServerClient | None, home: Path | None = None) -> ModelCard:
    """What is known about a model: from the server when it knows the model, else from the
    file in the local cache.

    Raises:
        ModelNotFoundError: neither knows it.
    """
    if client is not None:
        try:
            shown = client.show(name)
        except ModelNotFoundError:
            logger.debug("%s: not known to the server; reading the local cache", name)
        else:
            return ModelCard(
                name=name,
                summary=model_summary(shown),
                capabilities=list(shown.get("capabilities") or []),
                template=str(shown.get("template") or ""),
                license=str(shown.get("license") or ""),
                where=client.url,
            )
    return read_card(cached_file(name, home=home), name=name)


def format_card(card: ModelCard, *, template_lines: int = 6) -> str:
    """``ollama show``-style sections; the template is cut to its first lines."""
    out = ["  Model"]
    width = max((len(k) for k in card.summary), default=0) + 4
    out += [f"    {k.ljust(width)}{v}" for k, v in card.summary.items()]
    if card.capabilities:
        out += ["", "  Capabilities"] + [f"    {c}" for c in card.capabilities]
    if card.template:
        lines = card.template.strip("\n").splitlines()
        out += ["", "  Template"] + [f"    {line}" for line in lines[:template_lines]]
        if len(lines) > template_lines:
            out.append(f"    ... ({len(lines)} lines; --template prints it all)")
    if card.license:
        out += ["", "  License", f"    {card.license.splitlines()[0]}"]
    return "\n".join(out)


# --- rm, stop, cp -------------------------------------------------------------------------------


def _names(name: str) -> set[str]:
    """The ids a server may list a model under: the name, its file stem, its registry name."""
    out = {name, Path(name).stem if name.endswith(".gguf") else name}
    from ggufworker.errors import GGUFWorkerError
    from ggufworker.registry import load_registry

    try:
        entry = load_registry().get(name)
    except GGUFWorkerError:
        entry = None
    if entry is not None:
        out.add(entry.name)
    return out


def _row(client: ServerClient, name: str) -> dict[str, Any] | None:
    """The server's ``/models`` row of the model ``name`` means (None: not listed)."""
    names = _names(name)
    rows = [r for r in client.models() if r["id"] in names]
    # a name served for chat and embeddings has two rows: the one in use counts
    rows.sort(key=lambda r: r["status"]["value"] == "unloaded")
    return rows[0] if rows else None


def remove(
    name: str, *, client: ServerClient | None, force: bool = False, home: Path | None = None
) -> str:
    """Remove a model's file from the cache: the server's when one is up, else the local one.

    A model the server has loaded (or is loading) is refused unless ``force``: then it is
    unloaded first (its requests in flight finish).

    Returns:
        Where it was removed from.

    Raises:
        InvalidRequestError: the model is in use and ``force`` is off; or it is served from a
            local file (never deleted).
        ModelNotFoundError: it is not in the cache.
    """
    if client is not None:
        row = _row(client, name)
        if row is not None and (row["status"]["value"] != "unloaded" or row.get("active")):
            if not force:
                raise InvalidRequestError(
                    f"model {name!r} is in use on the server at {client.url} "
                    f"(`ggufworker stop {name}` first, or pass --force)"
                )
            client.unload(row["id"])
        try:
            client.delete(name)
            return client.url
        except ModelNotFoundError:
            logger.debug("%s: not in the server's cache; trying the local one", name)
    from ggufworker.registry.cache import remove_cached

    if name.endswith(".gguf") or Path(name).expanduser().is_file():
        raise InvalidRequestError(f"{name} is a local file, not a cached model; it is not deleted")
    path = cached_file(name, home=home)
    remove_cached(path)
    return str(path)


def stop(name: str, *, client: ServerClient) -> dict[str, Any]:
    """Unload a model on the server once its requests in flight have finished.

    Raises:
        ModelNotFoundError: the server does not serve it.
    """
    return client.unload(name)


def copy(source: str, destination: str, *, client: ServerClient) -> None:
    """Serve ``source`` also as ``destination`` on the server (until it stops).

    Raises:
        ModelNotFoundError: the server does not serve ``source``.
        InvalidRequestError: ``destination`` is empty.
    """
    if not destination.strip():
        raise InvalidRequestError("the new name is empty")
    client.copy(source, destination)
