"""LoRA adapters: loaded once per base, chosen per request, batched per adapter set.

An adapter (a GGUF made by ``python -m converters.st2gguf ADAPTER --lora --base BASE``) is
checked against the loaded model before llama.cpp sees it (architecture, the base facts the
converter wrote, every tensor's name and shape), then loaded with ``llama_adapter_lora_init`` and
kept until it is unloaded (``llama_adapter_lora_free``).

A request runs under an *adapter set*: (adapter id, scale) pairs, zero scales left out; the empty
set is the base. llama.cpp applies one set to a whole decode (``llama_set_adapters_lora`` on the
context), so the scheduler decodes one set per step: requests that share a set are batched
together, and when several sets have work the steps go round-robin over them, one step each, so
no set's queue can starve another's. A slot's KV is keyed by the set it was computed under and
reused only by requests of the same set; states computed under an adapter never go to the prompt
cache's RAM or disk tiers (only base states do), so nothing computed under adapter A is reused
for B or for the base.

Mixed in: :class:`LoraAdapters` into the Engine (any thread) here, and
:class:`~ggufworker.engine.lora_slots.LoraSlots` into the scheduler (scheduler thread only).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from ggufworker.engine._native import llama_cpp
from ggufworker.engine.model import Model
from ggufworker.engine.types import LoraInfo
from ggufworker.errors import InvalidRequestError, ModelNotFoundError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: (adapter id, scale) pairs sorted by id, no zero scales; () is the base alone
LoraKey = tuple[tuple[int, float], ...]

#: the facts the converter writes about the base an adapter was made for (converters/lora.py)
BASE_FACTS = ("vocab_size", "embedding_length", "block_count")


# --- checking an adapter against the model -------------------------------------------------


def check_adapter(path: Path, model: Model, base_shapes: dict[str, tuple[int, ...]]) -> int:
    """Raise unless the GGUF at ``path`` is a LoRA adapter llama.cpp can apply to ``model``.

    Returns:
        The adapter's tensor bytes (its memory).

    Raises:
        InvalidRequestError: not a LoRA adapter GGUF, or one made for another base; the message
            is one line naming the first difference.
    """
    import gguf

    name = path.name
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(
            f"LoRA adapter {name}: not a readable GGUF file ({exc})"
        ) from None

    def field(key: str) -> Any:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    if field("general.type") != "adapter" or field("adapter.type") != "lora":
        raise InvalidRequestError(
            f"{name} is not a LoRA adapter GGUF (make one with python -m converters.st2gguf "
            "ADAPTER_DIR --lora --base BASE)"
        )
    arch = field("general.architecture")
    if arch != model.architecture:
        raise InvalidRequestError(
            f"LoRA adapter {name} is for a {arch} model, this base is {model.architecture}"
        )
    base_facts = {
        "vocab_size": model.n_vocab,
        "embedding_length": _int(model.metadata.get(f"{arch}.embedding_length")),
        "block_count": _int(model.metadata.get(f"{arch}.block_count")),
    }
    for key in BASE_FACTS:
        want = field(f"ggufworker.lora.base.{key}")
        have = base_facts[key]
        if want is not None and have is not None and int(want) != have:
            raise InvalidRequestError(
                f"LoRA adapter {name} was made for a base with {key} {want}, this base has {have}"
            )
    size = 0
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in reader.tensors:
        stem, _, half = t.name.rpartition(".")
        if half not in ("lora_a", "lora_b"):
            raise InvalidRequestError(f"LoRA adapter {name}: unexpected tensor {t.name}")
        pairs.setdefault(stem, {})[half] = tuple(int(d) for d in reversed(t.shape))
        size += int(t.n_bytes)
    for stem, ab in pairs.items():
        if set(ab) != {"lora_a", "lora_b"}:
            raise InvalidRequestError(f"LoRA adapter {name}: {stem} lacks lora_a or lora_b")
        if stem not in base_shapes:
            raise InvalidRequestError(
                f"LoRA adapter {name} changes {stem}, which this base does not have"
            )
        out_dim, in_dim = base_shapes[stem][-2:]
        experts = base_shapes[stem][:-2]
        a, b = ab["lora_a"], ab["lora_b"]
        # lora_a is (rank, in), lora_b (out, rank) as numpy shapes; ([experts,] ...) for the
        # stacked expert tensors of a MoE
        if a[:-2] != experts or b[:-2] != experts:
            raise InvalidRequestError(
                f"LoRA adapter {name}: {stem} has {list(a[:-2])} experts in the adapter, "
                f"{list(experts)} in this base (made for another base)"
            )
        if a[-1] != in_dim or b[-2] != out_dim or a[-2] != b[-1]:
            raise InvalidRequestError(
                f"LoRA adapter {name}: {stem} is {list(b[-2:-1]) + list(a[-1:])} in the adapter, "
                f"{[out_dim, in_dim]} in this base (made for another base)"
            )
    if not pairs:
        raise InvalidRequestError(f"LoRA adapter {name} holds no tensors")
    return size


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def base_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model's GGUF with its numpy shape (read from the files' headers;
    a split model's ``NAME-0000i-of-0000N.gguf`` shards all)."""
    import gguf

    reader = gguf.GGUFReader(path)
    readers = [reader]
    count = reader.get_field("split.count")
    split = re.match(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$", path.name)
    if count is not None and int(count.contents()) > 1 and split is not None:
        for i in range(1, int(count.contents()) + 1):
            shard = path.with_name(f"{split['stem']}-{i:05d}-of-{split['n']}.gguf")
            if shard != path:
                readers.append(gguf.GGUFReader(shard))
    return {t.name: tuple(int(d) for d in reversed(t.shape)) for r in readers for t in r.tensors}


# --- the engine side (any thread) ----------------------------------------------------------


@dataclass
class _Adapter:
    info: LoraInfo
    ptr: Any  # llama_adapter_lora_p


class LoraAdapters:
    """Load, unload and list adapters; turn a request's adapter list into its set's key."""

    _model: Model
    _sched: Any  # the Scheduler (a LoraSlots)

    def _call(self, fn: Callable[[], T]) -> T:  # Engine's: run on the scheduler thread
        raise NotImplementedError

    def _init_lora(self) -> None:
        self._lora_lock = threading.Lock()
        self._adapters: dict[int, _Adapter] = {}
        self._lora_next_id = 0
        self._base_shapes: dict[str, tuple[int, ...]] | None = None

    def load_lora(self, name: str, path: str | Path, *, scale: float = 1.0) -> LoraInfo:
        """Check and load the adapter at ``path`` under ``name`` (ids count up from 0).

        Args:
            name: the adapter's name (requests and the server's ``BASE:NAME`` model ids use it).
            path: its GGUF file.
            scale: the scale a request naming only the adapter gets (``BASE:NAME``).

        Raises:
            InvalidRequestError: the name is taken, the file is missing or not an adapter for
                this base (one line saying what differs).
        """
        file = Path(path)
        if not name or any(c in name for c in " /"):
            raise InvalidRequestError(f"bad LoRA adapter name {name!r}", param="lora_name")
        if not file.is_file():
            raise InvalidRequestError(f"no LoRA adapter file at {file}", param="lora_path")
        if not math.isfinite(scale):
            raise InvalidRequestError("a LoRA scale must be a finite number", param="scale")
        with self._lora_lock:
            if any(a.info.name == name for a in self._adapters.values()):
                raise InvalidRequestError(
                    f"a LoRA adapter named {name!r} is already loaded", param="lora_name"
                )
            if self._base_shapes is None:
                self._base_shapes = base_tensor_shapes(self._model.path)
            shapes = self._base_shapes
        size = check_adapter(file, self._model, shapes)

        def init() -> Any:
            ptr = llama_cpp.llama_adapter_lora_init(self._model.ptr, str(file).encode())
            if not ptr:
                raise InvalidRequestError(f"llama.cpp could not load LoRA adapter {file.name}")
            return ptr

        ptr = self._call(init)
        with self._lora_lock:
            if any(a.info.name == name for a in self._adapters.values()):  # lost a race
                self._call(lambda: llama_cpp.llama_adapter_lora_free(ptr))
                raise InvalidRequestError(
                    f"a LoRA adapter named {name!r} is already loaded", param="lora_name"
                )
            lora_id = self._lora_next_id
            self._lora_next_id += 1
            info = LoraInfo(lora_id, name, str(file), float(scale), 0.0, size)
            self._adapters[lora_id] = _Adapter(info, ptr)
        self._call(lambda: self._sched.add_lora(lora_id, ptr))
        logger.info("LoRA adapter %s loaded from %s (%d bytes)", name, file, size)
        return info

    def unload_lora(self, name: str) -> LoraInfo:
        """Free the adapter ``name``; requests running or waiting under it end with an error.

        Raises:
            ModelNotFoundError: no adapter of that name is loaded.
        """
        adapter = self._lora_by_name(name)
        with self._lora_lock:
            self._adapters.pop(adapter.info.id, None)
        self._call(lambda: self._sched.drop_lora(adapter.info.id, name))
        logger.info("LoRA adapter %s unloaded", name)
        return adapter.info

    def loras(self) -> list[LoraInfo]:
        """The loaded adapters, by id."""
        with self._lora_lock:
            return [self._adapters[i].info for i in sorted(self._adapters)]

    def lora_activity(self) -> tuple[list[str], list[str]]:
        """Names of the adapters that running requests use, and of those that waiting
        requests use (sorted; the base alone is no adapter). Read without stopping the
        scheduler: a gauge for routers, possibly one step stale."""
        with self._lora_lock:
            names = {i: a.info.name for i, a in self._adapters.items()}
        running: set[str] = set()
        for slot in list(self._sched.slots):
            req = slot.req
            if req is not None:
                running.update(names[i] for i, _ in req.lora_key if i in names)
        waiting = {
            names[i] for req in list(self._sched.waiting) for i, _ in req.lora_key if i in names
        }
        return sorted(running), sorted(waiting)

    def set_lora_scales(self, scales: dict[int, float]) -> list[LoraInfo]:
        """Set the global scales (applied to requests that carry no adapter list; 0 by default,
        so the base id is the base), as llama-server's ``POST /lora-adapters`` does.

        Raises:
            ModelNotFoundError: an id names no loaded adapter.
            InvalidRequestError: a scale is not a finite number.
        """
        with self._lora_lock:
            for lora_id, scale in scales.items():
                if lora_id not in self._adapters:
                    raise ModelNotFoundError(f"no LoRA adapter with id {lora_id} is loaded")
                if not math.isfinite(scale):
                    raise InvalidRequestError("a LoRA scale must be a finite number")
            for lora_id, scale in scales.items():
                a = self._adapters[lora_id]
                a.info = replace(a.info, global_scale=float(scale))
            return [self._adapters[i].info for i in sorted(self._adapters)]

    def lora_key(self, lora: Sequence[tuple[str | int, float]] | None) -> LoraKey:
        """The set key of a request's adapter list (None: the global scales).

        Raises:
            ModelNotFoundError: an entry names no loaded adapter.
            InvalidRequestError: a scale is not a finite number.
        """
        with self._lora_lock:
            if lora is None:
                pairs: Iterable[tuple[int, float]] = [
                    (i, a.info.global_scale) for i, a in self._adapters.items()
                ]
            else:
                chosen: dict[int, float] = {}
                for ref, scale in lora:
                    if not math.isfinite(scale):
                        raise InvalidRequestError(
                            "a LoRA scale must be a finite number", param="lora"
                        )
                    chosen[self._resolve(ref)] = float(scale)
                pairs = chosen.items()
            return tuple(sorted((i, s) for i, s in pairs if s != 0.0))

    def _resolve(self, ref: str | int) -> int:
        if isinstance(ref, int):
            if ref in self._adapters:
                return ref
            raise ModelNotFoundError(f"no LoRA adapter with id {ref} is loaded")
        for i, a in self._adapters.items():
            if a.info.name == ref:
                return i
        raise ModelNotFoundError(f"no LoRA adapter named {ref!r} is loaded")

    def _lora_by_name(self, name: str) -> _Adapter:
        with self._lora_lock:
            for a in self._adapters.values():
                if a.info.name == name:
                    return a
        raise ModelNotFoundError(f"no LoRA adapter named {name!r} is loaded")

    def _free_loras(self) -> None:
        """Free every adapter (the engine is closing; the scheduler thread has stopped)."""
        with self._lora_lock:
            adapters = list(self._adapters.values())
            self._adapters.clear()
        for a in adapters:
            llama_cpp.llama_adapter_lora_free(a.ptr)


__all__ = ["LoraAdapters", "LoraKey", "base_tensor_shapes", "check_adapter"]
