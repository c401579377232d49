"""The adapters each served base model carries, kept across the base's unloads and reloads.

An adapter is served as the model id ``BASE:NAME`` (vLLM lists adapters as models whose
``parent`` is the base); a request to that id runs under the adapter at its scale. The table
only holds names, paths and scales; the engine of a loaded base holds the adapters themselves
(engine/lora.py), attached each time the base is loaded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufworker.errors import InvalidRequestError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of a base: its name, GGUF file and the scale its model id runs at."""

    name: str
    path: Path
    scale: float = 1.0


def parse_adapter(text: str) -> AdapterSpec:
    """``NAME=PATH[:SCALE]`` (the ``--lora`` flag) as an :class:`AdapterSpec`.

    Raises:
        InvalidRequestError: no ``=``, an empty name or path, or a bad scale.
    """
    name, eq, rest = text.partition("=")
    name = name.strip()
    if not eq or not name or not rest.strip():
        raise InvalidRequestError(f"--lora wants NAME=PATH[:SCALE], got {text!r}")
    path, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            pass  # a path with a colon in it
    if not math.isfinite(scale):
        raise InvalidRequestError(f"--lora {text!r}: the scale must be a finite number")
    return AdapterSpec(name, Path(path).expanduser(), scale)


class LoraTable:
    """Base model name -> its adapters, by name (insertion order: the adapter ids)."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, AdapterSpec]] = {}

    @classmethod
    def from_settings(cls, flags: list[str], base: str | None) -> LoraTable:
        """The adapters of the ``--lora`` flags, all for ``base`` (the first served model).

        Raises:
            InvalidRequestError: a flag is malformed, names a missing file, or adapters are
                given with no generation model to carry them.
        """
        table = cls()
        specs = [parse_adapter(f) for f in flags]
        if specs and base is None:
            raise InvalidRequestError("--lora needs a generation model (--model) to apply to")
        for spec in specs:
            if not spec.path.is_file():
                raise InvalidRequestError(f"--lora {spec.name}: no file at {spec.path}")
            table.add(base, spec)  # type: ignore[arg-type]
        return table

    def add(self, base: str, spec: AdapterSpec) -> None:
        """Record ``spec`` for ``base``.

        Raises:
            InvalidRequestError: ``base`` already has an adapter of that name.
        """
        specs = self._specs.setdefault(base, {})
        if spec.name in specs:
            raise InvalidRequestError(
                f"model {base!r} already has a LoRA adapter named {spec.name!r}",
                param="lora_name",
            )
        specs[spec.name] = spec

    def remove(self, base: str, name: str) -> None:
        self._specs.get(base, {}).pop(name, None)

    def adapters(self, base: str) -> list[AdapterSpec]:
        return list(self._specs.get(base, {}).values())

    def items(self) -> list[tuple[str, AdapterSpec]]:
        """(base, adapter) for every adapter."""
        return [(base, spec) for base, specs in self._specs.items() for spec in specs.values()]

    def find(self, name: str) -> tuple[str, AdapterSpec] | None:
        """The adapter a model id names: ``BASE:NAME``, or a bare adapter NAME (vLLM's ids)
        when one base has it; None when it names no adapter."""
        base, colon, adapter = name.rpartition(":")
        if colon and adapter in self._specs.get(base, {}):
            return base, self._specs[base][adapter]
        owners = [(b, specs[name]) for b, specs in self._specs.items() if name in specs]
        return owners[0] if len(owners) == 1 else None

    def attach(self, engine: Any, base: str) -> None:
        """Load ``base``'s adapters into its freshly loaded engine.

        Raises:
            InvalidRequestError: the engine takes no adapters (several replicas), or an
                adapter does not fit this base (one line from the engine's check).
        """
        specs = self.adapters(base)
        if not specs:
            return
        if not hasattr(engine, "load_lora"):
            raise InvalidRequestError("LoRA adapters need one engine per model (--replicas 1)")
        for spec in specs:
            engine.load_lora(spec.name, spec.path, scale=spec.scale)


def model_id(base: str, adapter: str) -> str:
    """The model id clients use for ``adapter`` of ``base``."""
    return f"{base}:{adapter}"
