"""An engine in a child process: the engine interface over a pipe, for models whose
llama.cpp may abort the whole process (a model split over RPC workers: llama.cpp's RPC client
calls ``GGML_ABORT`` when a worker goes away, see :mod:`ggufworker.engine.rpc`).

The child (``python -m ggufworker.engine.child_main FD``) loads an :class:`Engine` and serves it on
a socket pair: requests, cancels and a few calls in; acceptance, token events and results out,
as pickled tuples (:class:`multiprocessing.connection.Connection` framing). The parent holds a
:class:`ChildEngine`: it tokenizes with a vocabulary-only copy of the model (no round trip),
hands out ordinary :class:`~ggufworker.engine.handle.RequestHandle` streams fed by a reader
thread, and when the child dies ends every open stream with the error its ``on_exit`` callback
names (the supervisor decides what to blame: a worker, or the engine).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ggufworker import errors
from ggufworker.engine.handle import Completion, EngineStats, RequestHandle
from ggufworker.engine.model import Model
from ggufworker.engine.types import GenerationRequest, ModelInfo
from ggufworker.errors import EngineClosedError, GGUFWorkerError, InvalidRequestError

logger = logging.getLogger(__name__)

#: seconds a call to the child may take before the parent gives up on it
CALL_TIMEOUT_S = 30.0


class ChildExitedError(EngineClosedError):
    """The child process ended (its exit code, negative for a signal, in ``returncode``)."""

    def __init__(self, message: str, *, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


def pack_error(exc: BaseException) -> tuple[str, str, str | None]:
    """An exception as (class name, message, param): ggufworker's typed errors cross the
    pipe by name, so no exception class needs to be picklable."""
    return type(exc).__name__, str(exc), getattr(exc, "param", None)


def unpack_error(packed: tuple[str, str, str | None]) -> GGUFWorkerError:
    """The typed error :func:`pack_error` described (a :class:`GenerationError` for one that is
    not in :mod:`ggufworker.errors`)."""
    name, message, param = packed
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, GGUFWorkerError)):
        return errors.GenerationError(message, param=param)
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    if param is not None:
        exc.param = param
    return exc


def render_with(info: ModelInfo, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """Render messages with the chat template of a model described by ``info`` (as
    :meth:`Engine.render_chat` does with its own), without the model."""
    from ggufworker.engine.chat import render_chat

    return render_chat(
        info.chat_template, messages, bos_token=info.bos_token, eos_token=info.eos_token, **kwargs
    )


class ChildEngine:
    """An :class:`~ggufworker.engine.Engine` loaded in a child process, used like one.

    Generation, tokens, chat rendering, stats and the prompt cache's stats and clearing work;
    embeddings, LoRA adapters and slot files do not (an error that says so).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: dict[str, Any],
        *,
        on_exit: Callable[[int | None], BaseException] | None = None,
        load_timeout: float = 600.0,
        vocab: Model | None = None,
    ) -> None:
        """Start the child and wait for its engine to load.

        Args:
            path: the GGUF file.
            options: :meth:`Engine.load` keyword arguments (picklable values).
            on_exit: called once when the child has ended unexpectedly, with its exit code;
                returns the error that open streams and later requests get.
            load_timeout: seconds the load may take.
            vocab: a vocabulary-only :class:`Model` of the same file to tokenize with (kept
                open by its owner); default: one loaded here and closed with the engine.

        Raises:
            ChildExitedError: the child died while loading (e.g. a worker went away).
            ModelLoadError, InvalidRequestError: the child's load failed with this error.
        """
        self.path = Path(path)
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._keys = itertools.count(1)
        self._handles: dict[int, RequestHandle] = {}
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._failure: BaseException | None = None
        self._closing = False
        self._last_stats: EngineStats | None = None
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*sys.path, env.get("PYTHONPATH", "")])
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ggufworker.engine.child_main",
                str(theirs.fileno()),
                str(os.getpid()),
            ],
            pass_fds=[theirs.fileno()],
            env=env,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._own_vocab = vocab is None
        self._vocab: Model | None = vocab
        try:
            self._send(("load", str(path), options, logging.getLogger().level))
            if self._vocab is None:  # the tokenizer, loaded while the child loads the weights
                self._vocab = Model(path, vocab_only=True)
            reply = self._wait_loaded(load_timeout)
        except BaseException:
            self._kill()
            if self._own_vocab and self._vocab is not None:
                self._vocab.close()
            raise
        self.info: ModelInfo = reply[1]
        self._props: dict[str, Any] = reply[2]
        self._reader = threading.Thread(
            target=self._read, name=f"child-engine-{self.info.name}", daemon=True
        )
        self._reader.start()

    def _wait_loaded(self, timeout: float) -> tuple[Any, ...]:
        if not self._conn.poll(timeout):
            raise errors.ModelLoadError(f"{self.path.name} did not load in {timeout:.0f}s")
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.wait(10)
            raise ChildExitedError(
                f"the engine process loading {self.path.name} exited ({_describe_exit(code)})",
                returncode=code,
            ) from None
        if reply[0] == "failed":
            raise unpack_error(reply[1])
        return reply  # ("ready", info, props)

    # --- the pipe ----------------------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _read(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                self._dispatch(message)
        except (EOFError, OSError):
            pass
        except Exception:
            logger.exception("child engine reader failed")
        self._child_ended()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind, key = message[0], message[1]
        if kind == "event":
            handle = self._handles.get(key)
            if handle is not None:
                handle._deliver(message[2])
                if message[2].finish_reason is not None:
                    self._handles.pop(key, None)
        elif kind in ("error", "end"):
            handle = self._handles.pop(key, None)
            if handle is not None:
                if kind == "error":
                    handle._deliver(unpack_error(message[2]))
                else:
                    handle._end()
        else:  # "result" / "raise" of a call or a submit
            future = self._pending.pop(key, None)
            if future is not None and not future.done():
                if kind == "raise":
                    future.set_exception(unpack_error(message[2]))
                else:
                    future.set_result(message[2])

    def _child_ended(self) -> None:
        """The pipe closed: end open streams and pending calls with the supervisor's error."""
        try:
            code = self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self._proc.returncode
        if self._closing:
            failure: BaseException = EngineClosedError("the engine is closed")
        else:
            logger.error(
                "the engine process of %s exited (%s)", self.info.name, _describe_exit(code)
            )
            failure = (
                self._on_exit(code)
                if self._on_exit is not None
                else ChildExitedError(
                    f"the engine process of model {self.info.name!r} exited "
                    f"({_describe_exit(code)})",
                    returncode=code,
                )
            )
        with self._lock:
            self._failure = failure
            handles, self._handles = list(self._handles.values()), {}
            pending, self._pending = list(self._pending.values()), {}
        for handle in handles:
            handle._deliver(failure)
        for future in pending:
            if not future.done():
                future.set_exception(failure)

    def _call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """Run ``method`` of the child's engine and return its result."""
        key = next(self._keys)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._raise_if_down()
            self._pending[key] = future
        try:
            self._send(("call", key, method, args))
        except OSError:
            pass  # the reader sees the pipe close and fails the future
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self._pending.pop(key, None)
            raise EngineClosedError(
                f"the engine process of model {self.info.name!r} did not answer in {timeout:.0f}s"
            ) from None

    def _raise_if_down(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise EngineClosedError("the engine is closed")

    # --- the engine interface ----------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a generation in the child and return its stream handle (see
        :meth:`Engine.submit`; the child's checks raise here, typed as there)."""
        if request.lora:
            raise InvalidRequestError(
                "LoRA adapters are not served by a model split over RPC workers", param="model"
            )
        if isinstance(request.prompt, str):
            assert self._vocab is not None
            tokens = self._vocab.tokenize(
                request.prompt, add_special=request.add_bos, parse_special=request.parse_special
            )
            request = replace(request, prompt=tokens)
        key = next(self._keys)
        rid = request.request_id or f"req-{key}-{os.getpid()}"
        handle = RequestHandle(rid, len(request.prompt), lambda _id: self._cancel(key))
        accepted: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._raise_if_down()
            self._handles[key] = handle
            self._pending[key] = accepted
        try:
            self._send(("submit", key, replace(request, request_id=rid)))
            accepted.result(CALL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            self._drop(key)
            raise EngineClosedError(
                f"the engine process of model {self.info.name!r} did not take the request"
            ) from None
        except OSError:
            self._drop(key)
            self._raise_if_down()
            raise EngineClosedError(f"the engine process of {self.info.name!r} is gone") from None
        except BaseException:
            self._drop(key)
            raise
        return handle

    def _drop(self, key: int) -> None:
        with self._lock:
            self._handles.pop(key, None)
            self._pending.pop(key, None)

    def _cancel(self, key: int) -> None:
        if self._failure is None and not self._closing:
            try:
                self._send(("cancel", key))
            except OSError:
                pass

    def generate(self, request: GenerationRequest) -> Completion:
        """Run a request to the end and return the whole completion (blocking)."""
        return self.submit(request).collect(logprobs=request.params.logprobs is not None)

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """Tokenize ``text`` here, with the vocabulary-only copy of the model."""
        assert self._vocab is not None
        return self._vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Token ids back to text, here."""
        assert self._vocab is not None
        return self._vocab.detokenize(ids)

    def render_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        """Render messages with the model's chat template (see :meth:`Engine.render_chat`)."""
        return render_with(self.info, messages, **kwargs)

    def stats(self) -> EngineStats:
        """The child engine's load; its last answer (nothing busy) once it is gone."""
        if self.alive:
            try:
                self._last_stats = self._call("stats", timeout=5.0)
            except GGUFWorkerError:
                pass
        last = self._last_stats
        if last is None or not self.alive:
            return EngineStats(
                n_parallel=self.info.n_parallel,
                busy_slots=0,
                queue_depth=0,
                max_queue=last.max_queue if last else 0,
                total_prompt_tokens=last.total_prompt_tokens if last else 0,
                total_generated_tokens=last.total_generated_tokens if last else 0,
                total_cached_tokens=last.total_cached_tokens if last else 0,
                total_requests=last.total_requests if last else 0,
            )
        return last

    def cache_stats(self) -> Any:
        """The child's prompt cache statistics (see :meth:`Engine.cache_stats`)."""
        return self._call("cache_stats", timeout=5.0)

    def clear_cache(self) -> None:
        """Forget the child's idle cached prefixes."""
        self._call("clear_cache")

    @property
    def alive(self) -> bool:
        """False once the child has ended or the engine was closed."""
        return self._failure is None and not self._closing and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it has ended (negative: killed by that signal)."""
        return self._proc.poll()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def kv_layout(self) -> str:
        return str(self._props.get("kv_layout", "unified"))

    @property
    def kv_cache_type(self) -> str:
        return str(self._props.get("kv_cache_type", "f16/f16"))

    @property
    def sampling(self) -> str:
        return str(self._props.get("sampling", "host"))

    @property
    def pipelined(self) -> bool:
        return bool(self._props.get("pipelined", False))

    def close(self) -> None:
        """Stop the child (its open streams end with :class:`EngineClosedError`)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        try:
            self._send(("close",))
            self._proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            self._kill()
        self._reader.join(15)
        self._conn.close()
        if self._own_vocab and self._vocab is not None:
            self._vocab.close()
        self._vocab = None

    def kill(self) -> None:
        """End the child at once (its open streams get the ``on_exit`` error)."""
        self._kill()

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


__all__ = ["ChildEngine", "ChildExitedError", "pack_error", "render_with", "unpack_error"]
