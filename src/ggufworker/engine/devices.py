"""The compute devices llama.cpp sees, and checks of where a model is asked to run.

llama.cpp's model params place a model with three fields: ``split_mode`` (none: one GPU,
layer: whole layers per GPU, row: matrices split by rows across GPUs), ``main_gpu`` (the GPU
of split mode none, and the one holding small tensors otherwise) and ``tensor_split`` (each
GPU's share). An index there counts only the GPUs llama.cpp offloads to, in the order of
ggml's backend device registry, not the CPU. llama.cpp reports a ``main_gpu`` past the end
only as a log line and a failed load, and ignores ``tensor_split`` entries past the last GPU,
so both are checked here first, with an error that names the flag.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ggufworker.engine._native import ensure_backend, llama_cpp
from ggufworker.errors import InvalidRequestError

logger = logging.getLogger(__name__)

SplitMode = Literal["none", "layer", "row"]

SPLIT_MODES: dict[str, int] = {
    "none": llama_cpp.LLAMA_SPLIT_MODE_NONE,
    "layer": llama_cpp.LLAMA_SPLIT_MODE_LAYER,
    "row": llama_cpp.LLAMA_SPLIT_MODE_ROW,
}

# enum ggml_backend_dev_type (ggml-backend.h)
_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


@dataclass(frozen=True)
class Device:
    """One ggml backend device."""

    index: int  # position in ggml's device registry
    name: str  # e.g. "CUDA0", "CPU"
    description: str
    kind: str  # cpu, gpu, igpu, accel
    memory_free: int
    memory_total: int


@dataclass(frozen=True)
class Placement:
    """Where one engine's model goes: llama_model_params fields plus a label for humans."""

    split_mode: SplitMode | None = None  # None: llama.cpp's default (layer)
    main_gpu: int | None = None
    tensor_split: tuple[float, ...] | None = None
    device: str = "cpu"  # "CUDA1", "gpu" (all GPUs, split), "cpu"

    def engine_options(self) -> dict[str, Any]:
        """The placement as :meth:`Engine.load` keyword arguments."""
        return {
            "split_mode": self.split_mode,
            "main_gpu": self.main_gpu,
            "tensor_split": self.tensor_split,
        }


def _ggml() -> ctypes.CDLL:
    # The backend device registry is in libggml; llama-cpp-python loads it but binds none of
    # its device functions, so declare the few used here.
    from llama_cpp import _ggml

    lib = _ggml.libggml
    if not getattr(lib, "_ggufworker_devices", False):
        lib.ggml_backend_dev_count.argtypes = []
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        size_p = ctypes.POINTER(ctypes.c_size_t)
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
        lib.ggml_backend_dev_memory.restype = None
        lib._ggufworker_devices = True
    return lib


def list_devices() -> list[Device]:
    """Every device ggml's backend registry holds (GPUs, the CPU, accelerators)."""
    ensure_backend()
    lib = _ggml()
    out = []
    for i in range(int(lib.ggml_backend_dev_count())):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            Device(
                index=i,
                name=(lib.ggml_backend_dev_name(dev) or b"?").decode(errors="replace"),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                kind=_DEVICE_TYPES.get(int(lib.ggml_backend_dev_type(dev)), "other"),
                memory_free=int(free.value),
                memory_total=int(total.value),
            )
        )
    return out


def gpu_devices() -> list[Device]:
    """The devices llama.cpp offloads to, in the order ``main_gpu`` and ``tensor_split``
    index them: discrete GPUs, or the integrated ones when there is no discrete GPU."""
    devices = list_devices()
    gpus = [d for d in devices if d.kind == "gpu"]
    return gpus or [d for d in devices if d.kind == "igpu"]


def _describe(gpus: Sequence[Device]) -> str:
    if not gpus:
        return "this llama.cpp build sees no GPU (CPU only)"
    names = ", ".join(f"{i}: {d.name}" for i, d in enumerate(gpus))
    return f"this llama.cpp build sees {len(gpus)} GPU(s) ({names})"


def check_placement(
    *,
    split_mode: SplitMode | None = None,
    main_gpu: int | None = None,
    tensor_split: Sequence[float] | None = None,
    gpus: Sequence[Device] | None = None,
) -> None:
    """Check placement options against the GPUs that exist.

    Args:
        split_mode: none, layer or row (None: llama.cpp's default, layer).
        main_gpu: index among the GPUs. 0 is accepted without a GPU (it is the default).
        tensor_split: one non-negative share per GPU, from GPU 0 on.
        gpus: the GPUs to check against (default: :func:`gpu_devices`).

    Raises:
        InvalidRequestError: an unknown split mode, a GPU index or a split that names GPUs
            that are not there, or a tensor split with split mode none.
    """
    if split_mode is not None and split_mode not in SPLIT_MODES:
        raise InvalidRequestError(
            f"split mode {split_mode!r} is not one of {', '.join(SPLIT_MODES)}",
            param="split_mode",
        )
    if main_gpu is None and tensor_split is None:
        return
    gpus = gpu_devices() if gpus is None else gpus
    if main_gpu is not None:
        if main_gpu < 0:
            raise InvalidRequestError(f"main GPU must be >= 0, got {main_gpu}", param="main_gpu")
        if main_gpu >= max(1, len(gpus)):
            raise InvalidRequestError(
                f"main GPU {main_gpu} is not there: {_describe(gpus)}", param="main_gpu"
            )
    if tensor_split is not None:
        shares = list(tensor_split)
        if not shares or any(not x >= 0 for x in shares) or not any(x > 0 for x in shares):
            raise InvalidRequestError(
                "tensor split must be non-negative shares, at least one above 0",
                param="tensor_split",
            )
        if split_mode == "none":
            raise InvalidRequestError(
                "a tensor split needs split mode layer or row (none keeps the model on one GPU)",
                param="tensor_split",
            )
        limit = min(len(gpus), int(llama_cpp.llama_max_devices()))
        if len(shares) > limit:
            raise InvalidRequestError(
                f"tensor split {','.join(f'{x:g}' for x in shares)} names {len(shares)} "
                f"GPU(s): {_describe(gpus)}",
                param="tensor_split",
            )


def replica_placements(
    replicas: int,
    *,
    split_mode: SplitMode | None = None,
    main_gpu: int | None = None,
    tensor_split: Sequence[float] | None = None,
    n_gpu_layers: int | None = None,
    gpus: Sequence[Device] | None = None,
) -> list[Placement]:
    """Where each of ``replicas`` engines of one model goes.

    One replica: the options as given. Several on a machine with GPUs (and layers offloaded):
    replica ``i`` whole on GPU ``main_gpu + i`` (split mode none), so the GPUs must exist and
    no split may be asked for. Several without a GPU (or with ``n_gpu_layers=0``): CPU engines
    sharing the cores.

    Raises:
        InvalidRequestError: see :func:`check_placement`; more GPU replicas than GPUs; a split
            asked for together with several GPU replicas.
    """
    if replicas < 1:
        raise InvalidRequestError(f"replicas must be >= 1, got {replicas}", param="replicas")
    gpus = gpu_devices() if gpus is None else gpus
    check_placement(split_mode=split_mode, main_gpu=main_gpu, tensor_split=tensor_split, gpus=gpus)
    on_gpu = bool(gpus) and n_gpu_layers != 0
    if replicas == 1:
        if not on_gpu:
            label = "cpu"
        elif split_mode == "none" or len(gpus) == 1:
            label = gpus[main_gpu or 0].name
        else:
            label = "gpu"
        split = tuple(tensor_split) if tensor_split is not None else None
        return [Placement(split_mode, main_gpu, split, label)]
    if not on_gpu:
        return [Placement(split_mode, main_gpu, None, "cpu") for _ in range(replicas)]
    if split_mode in ("layer", "row") or tensor_split is not None:
        raise InvalidRequestError(
            "several replicas put one whole copy of the model on each GPU; "
            "drop the split mode layer/row and the tensor split, or use one replica",
            param="replicas",
        )
    first = main_gpu or 0
    if first + replicas > len(gpus):
        raise InvalidRequestError(
            f"{replicas} replicas from GPU {first} need {first + replicas} GPUs: {_describe(gpus)}",
            param="replicas",
        )
    return [Placement("none", first + i, None, gpus[first + i].name) for i in range(replicas)]


def threads_per_replica(threads: int | None, replicas: int) -> int | None:
    """CPU threads for each replica: as given, or the cores shared out when several CPU
    engines would each take them all (llama.cpp's CPU threads spin while they wait, so two
    engines with a thread per core each slow both down)."""
    if threads is not None or replicas <= 1:
        return threads
    return max(1, (os.cpu_count() or 1) // replicas)


__all__ = [
    "SPLIT_MODES",
    "Device",
    "Placement",
    "SplitMode",
    "check_placement",
    "gpu_devices",
    "list_devices",
    "replica_placements",
    "threads_per_replica",
]
