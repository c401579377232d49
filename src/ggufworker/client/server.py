"""A client of a running ggufworker server: where it is, whether it is up, and the calls the
terminal commands make (the lifecycle API, Ollama's model endpoints, streamed chat).

The server is found as ``serve`` is configured: ``GGUFWORKER_HOST`` and ``GGUFWORKER_PORT``
(default 127.0.0.1:8080). Like ``OLLAMA_HOST``, ``GGUFWORKER_HOST`` may also hold
``host:port`` or a whole URL. The API key comes from ``GGUFWORKER_API_KEY`` (else the first of
``GGUFWORKER_API_KEYS``, the server's own list).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ggufworker.errors import GGUFWorkerError, InvalidRequestError, ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8080
ENV_HOST = "GGUFWORKER_HOST"
ENV_PORT = "GGUFWORKER_PORT"
ENV_API_KEY = "GGUFWORKER_API_KEY"
ENV_API_KEYS = "GGUFWORKER_API_KEYS"


class ServerError(GGUFWorkerError):
    """The server answered a request with an error (its message is passed on)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachableError(GGUFWorkerError):
    """No server answers at the URL (a command that needs one was given)."""


def server_url(env: Mapping[str, str] | None = None) -> str:
    """The URL of the local server, from ``GGUFWORKER_HOST`` / ``GGUFWORKER_PORT``."""
    env = os.environ if env is None else env
    host = env.get(ENV_HOST, "").strip()
    port = env.get(ENV_PORT, "").strip() or str(DEFAULT_PORT)
    if "://" in host:
        return host.rstrip("/")
    if host.count(":") == 1:  # host:port, as OLLAMA_HOST takes it
        host, port = host.split(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def api_key(env: Mapping[str, str] | None = None) -> str | None:
    """The API key to send (None: send none)."""
    env = os.environ if env is None else env
    key = env.get(ENV_API_KEY, "").strip()
    if key:
        return key
    keys = [k.strip() for k in env.get(ENV_API_KEYS, "").strip("[]").split(",")]
    keys = [k.strip("\"'") for k in keys if k.strip("\"'")]
    return keys[0] if keys else None


@dataclass
class Chunk:
    """A streamed piece of an answer."""

    content: str = ""
    reasoning: str = ""


def _raise_for(response: httpx.Response) -> None:
    """Turn an error answer into a typed error carrying the server's message."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    message = f"HTTP {response.status_code}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
        elif isinstance(err, str):
            message = err
    if response.status_code == 404:
        raise ModelNotFoundError(message)
    if response.status_code == 400:
        raise InvalidRequestError(message)
    if response.status_code == 401:
        raise ServerError(
            f"{message} (set {ENV_API_KEY} or pass --api-key)", status=response.status_code
        )
    raise ServerError(message, status=response.status_code)


class ServerClient:
    """Calls to one server. Use :meth:`connect` to get one only when a server is up."""

    def __init__(self, url: str, *, key: str | None = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @classmethod
    def connect(
        cls, url: str | None = None, *, key: str | None = None, probe_s: float = 2.0
    ) -> ServerClient | None:
        """A client of the server at ``url`` (default :func:`server_url`) when one answers
        ``/health`` there, else None."""
        client = cls(url or server_url(), key=key if key is not None else api_key())
        if client.health(timeout=probe_s) is None:
            client.close()
            return None
        return client

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls ---------------------------------------------------------------------------

    def health(self, *, timeout: float = 2.0) -> dict[str, Any] | None:
        """``/health``'s body when a ggufworker server answers (ready or still loading)."""
        try:
            response = self._http.get("/health", timeout=timeout)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        if isinstance(body, dict) and "status" in body:
            return body
        return None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(f"{self.url}: {exc}") from exc
        _raise_for(response)
        return response.json() if response.content else None

    def models(self) -> list[dict[str, Any]]:
        """``GET /models``: every known model with its status."""
        return list(self._json("GET", "/models")["data"])

    def chat_models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the served models' cards (capabilities, loaded)."""
        return list(self._json("GET", "/v1/models")["data"])

    def load(self, model: str, *, keep_alive: float | None = None) -> dict[str, Any]:
        """``POST /models/load``; the model's row once loaded."""
        body: dict[str, Any] = {"model": model}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return dict(self._json("POST", "/models/load", json=body)["model"])

    def unload(self, model: str) -> dict[str, Any]:
        """``POST /models/unload`` (returns once the requests in flight have finished)."""
        return dict(self._json("POST", "/models/unload", json={"model": model})["model"])

    def show(self, model: str) -> dict[str, Any]:
        """``POST /api/show``: details, metadata, template, capabilities, license."""
        return dict(self._json("POST", "/api/show", json={"model": model}))

    def props(self, model: str) -> dict[str, Any]:
        """``GET /props``: defaults, context, template and capabilities of a model."""
        return dict(self._json("GET", "/props", params={"model": model}))

    def delete(self, model: str) -> None:
        """``DELETE /api/delete``: remove the model's file from the server's cache."""
        self._json("DELETE", "/api/delete", json={"model": model})

    def copy(self, source: str, destination: str) -> None:
        """``POST /api/copy``: serve ``source`` also as ``destination``."""
        self._json("POST", "/api/copy", json={"source": source, "destination": destination})

    def chat(
        self, model: str, messages: list[dict[str, Any]], options: Mapping[str, Any]
    ) -> Iterator[Chunk]:
        """Stream an answer from ``/v1/chat/completions``. Closing the iterator early closes
        the connection, which cancels the request on the server."""
        body = {"model": model, "messages": messages, "stream": True, **options}
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                if not response.is_success:
                    response.read()
                    _raise_for(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise ServerError(str(chunk["error"].get("message", chunk["error"])))
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        piece = Chunk(
                            content=delta.get("content") or "",
                            reasoning=delta.get("reasoning_content") or "",
                        )
                        if piece.content or piece.reasoning:
                            yield piece
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(f"{self.url}: {exc}") from exc
