"""The one place that imports llama_cpp: backend start-up and log routing.

llama.cpp logs through a C callback; we route it into :mod:`logging` so that library users
decide what they see (llama.cpp's own INFO lines are DEBUG here: they are load-time noise).
"""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp  # noqa: F401  (re-exported for the engine modules)

logger = logging.getLogger("ggufworker.engine.llama_cpp")

_LEVELS = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.WARNING,
    4: logging.ERROR,
}
_init_lock = threading.Lock()
_initialized = False
_last_level = logging.DEBUG


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    # ggml levels: 1 debug, 2 info, 3 warn, 4 error; 5 (GGML_LOG_LEVEL_CONT) continues the
    # previous line at its level.
    lvl = _last_level if level == 5 else _LEVELS.get(level, logging.DEBUG)
    _last_level = lvl
    if logger.isEnabledFor(lvl):
        msg = text.decode("utf-8", errors="replace").rstrip("\n")
        if msg:
            logger.log(lvl, "%s", msg)


def ensure_backend() -> None:
    """Initialise llama.cpp's backends once per process and route its logs to logging."""
    global _initialized
    with _init_lock:
        if _initialized:
            return
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _initialized = True
