"""llama.cpp's RPC backend: remote devices for a model, and the worker that serves them.

A worker (``ggml_backend_rpc_start_server``) exposes its local devices over TCP; a client
registers it with ``ggml_backend_rpc_add_server`` and gets one backend device per remote device,
which a model takes in ``llama_model_params.devices`` like a local GPU (weights are split over
them by layer, ``tensor_split`` shares in device order). Both functions are reached through the
RPC backend's ``get_proc_address``, as llama.cpp's own tools do; llama-cpp-python binds neither.

The protocol has no authentication, and the client side aborts the whole process when a worker
disappears (``GGML_ABORT("Remote RPC server crashed or returned malformed response")``): a
model split over workers runs in a child process (:mod:`ggufworker.engine.child`).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence

from ggufworker.engine._native import ensure_backend
from ggufworker.errors import InvalidRequestError, ModelLoadError

logger = logging.getLogger(__name__)

_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_START_SERVER = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)  # fmt: skip
# enum ggml_backend_dev_type (ggml-backend.h)
_CPU, _ACCEL = 0, 3


def _ggml() -> ctypes.CDLL:
    # The backend registry lives in libggml; declare the few calls used here.
    from llama_cpp import _ggml

    lib = _ggml.libggml
    if not getattr(lib, "_ggufworker_rpc", False):
        lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
        lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_count.argtypes = []
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
        lib.ggml_backend_dev_by_name.restype = ctypes.c_void_p
        lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_name.restype = ctypes.c_char_p
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        lib._ggufworker_rpc = True
    return lib


def _proc(name: str) -> int:
    """The address of one of the RPC backend's functions.

    Raises:
        ModelLoadError: this llama.cpp build has no RPC backend (built without GGML_RPC=ON).
    """
    ensure_backend()
    lib = _ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    addr = lib.ggml_backend_reg_get_proc_address(reg, name.encode()) if reg else None
    if not addr:
        raise ModelLoadError(
            "this llama.cpp build has no RPC backend: reinstall with scripts/install.py "
            "(it builds with -DGGML_RPC=ON)"
        )
    return int(addr)


def supported() -> bool:
    """Whether this llama.cpp build has the RPC backend."""
    try:
        _proc("ggml_backend_rpc_add_server")
    except ModelLoadError:
        return False
    return True


def remote_devices(endpoints: Sequence[str]) -> list[int]:
    """The backend devices of the RPC workers at ``endpoints``, in the order given.

    Connects to each worker (llama.cpp keeps one connection per endpoint for the process). A
    worker that does not answer aborts the process (llama.cpp's ``GGML_ABORT``), so callers
    check that each one accepts connections first and run this in a child process.

    Raises:
        ModelLoadError: no RPC backend, or a worker reports no device.
    """
    add_server = _ADD_SERVER(_proc("ggml_backend_rpc_add_server"))
    lib = _ggml()
    out: list[int] = []
    for endpoint in endpoints:
        reg = add_server(endpoint.encode())
        if not reg:
            raise ModelLoadError(f"RPC worker {endpoint} reports no device")
        for i in range(int(lib.ggml_backend_reg_dev_count(reg))):
            out.append(int(lib.ggml_backend_reg_dev_get(reg, i)))
    return out


def local_offload_devices() -> list[int]:
    """This machine's devices a model offloads to besides RPC ones (GPUs; never the CPU)."""
    lib = _ggml()
    out = []
    for i in range(int(lib.ggml_backend_dev_count())):
        dev = lib.ggml_backend_dev_get(i)
        name = (lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace")
        if int(lib.ggml_backend_dev_type(dev)) in (1, 2) and not name.startswith("RPC"):
            out.append(int(dev))
    return out


def device_array(devices: Sequence[int]) -> ctypes.Array[ctypes.c_void_p]:
    """A NULL-terminated ``ggml_backend_dev_t`` array for ``llama_model_params.devices``."""
    return (ctypes.c_void_p * (len(devices) + 1))(*devices, None)


def worker_devices(names: Sequence[str] = ()) -> list[int]:
    """The local devices a worker serves: the ones named, else every non-CPU device, else the
    CPU (the choice of llama.cpp's own rpc-server).

    Raises:
        InvalidRequestError: a name that is not a device here (the message lists them).
    """
    ensure_backend()
    lib = _ggml()
    every = [lib.ggml_backend_dev_get(i) for i in range(int(lib.ggml_backend_dev_count()))]
    if names:
        out = []
        for name in names:
            dev = lib.ggml_backend_dev_by_name(name.encode())
            if not dev:
                known = ", ".join(
                    (lib.ggml_backend_dev_name(d) or b"?").decode(errors="replace") for d in every
                )
                raise InvalidRequestError(
                    f"no device {name!r} here (devices: {known})", param="device"
                )
            out.append(int(dev))
        return out
    accel = [int(d) for d in every if int(lib.ggml_backend_dev_type(d)) not in (_CPU, _ACCEL)]
    return accel or [int(d) for d in every if int(lib.ggml_backend_dev_type(d)) == _CPU][:1]


def device_names(devices: Sequence[int]) -> list[str]:
    """The ggml names of devices (``CPU``, ``CUDA0``, ``RPC0``)."""
    lib = _ggml()
    return [(lib.ggml_backend_dev_name(d) or b"?").decode(errors="replace") for d in devices]


def start_server(
    endpoint: str, devices: Sequence[int], *, cache_dir: str | None, n_threads: int
) -> None:
    """Serve ``devices`` to RPC clients at ``endpoint`` (``host:port``). Blocks for as long as
    the worker runs; returns only when it could not start (llama.cpp printed why)."""
    start = _START_SERVER(_proc("ggml_backend_rpc_start_server"))
    arr = (ctypes.c_void_p * len(devices))(*devices)
    start(
        endpoint.encode(),
        cache_dir.encode() if cache_dir else None,
        n_threads,
        len(devices),
        ctypes.cast(arr, ctypes.POINTER(ctypes.c_void_p)),
    )


__all__ = [
    "device_array",
    "device_names",
    "local_offload_devices",
    "remote_devices",
    "start_server",
    "supported",
    "worker_devices",
]
