"""A terminal chat with one model, through a running server or the engine in this process.

:class:`ChatSession` keeps the conversation (system message, history, sampling options) and
streams answers from a :class:`ChatBackend`: :class:`RemoteChat` (``/v1/chat/completions`` of a
running server) or :class:`LocalChat` (an engine loaded here, no HTTP server, no FastAPI).
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import re
import shlex
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

from ggufworker.client.server import Chunk, ServerClient
from ggufworker.errors import InvalidRequestError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")

#: ``/set parameter`` names (Ollama's, and OpenAI's spelling) -> request field and type
PARAMETERS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "num_predict": ("max_tokens", int),
    "max_tokens": ("max_tokens", int),
    "seed": ("seed", int),
    "repeat_penalty": ("repeat_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "stop": ("stop", str),
}


class ChatBackend(Protocol):
    """Where a terminal chat's answers come from."""

    model: str
    where: str  # for people: "the server at URL" or "this process"
    vision: bool  # takes images

    def stream(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> Iterator[Chunk]:
        """Stream the answer to ``messages``; closing the iterator stops the generation."""
        ...

    def info(self) -> dict[str, str]:
        """What ``/show info`` prints: architecture, parameters, context, quantization..."""
        ...

    def close(self) -> None: ...


def parse_parameter(name: str, value: str) -> tuple[str, Any]:
    """A ``/set parameter NAME VALUE`` as a request field and typed value.

    Raises:
        InvalidRequestError: unknown name or a value of the wrong type.
    """
    key = name.strip().lower()
    if key not in PARAMETERS:
        known = ", ".join(sorted(PARAMETERS))
        raise InvalidRequestError(f"unknown parameter {name!r} (known: {known})")
    field, kind = PARAMETERS[key]
    try:
        parsed: Any = kind(value)
    except ValueError:
        raise InvalidRequestError(
            f"parameter {name!r} needs a {kind.__name__}, got {value!r}"
        ) from None
    return field, parsed


def split_images(text: str) -> tuple[str, list[Path]]:
    """Take image file paths out of a message (as Ollama does): the text without them, and
    the paths of the image files that exist."""
    images: list[Path] = []
    try:
        words = shlex.split(text, posix=True)
    except ValueError:
        words = text.split()
    rest = text
    for word in words:
        word = word.rstrip("?!.,;:)")  # "what is in ./cat.png?"
        if not word.lower().endswith(IMAGE_SUFFIXES):
            continue
        path = Path(word).expanduser()
        if path.is_file():
            images.append(path)
            rest = re.sub(r"['\"]?" + re.escape(word) + r"['\"]?", "", rest, count=1)
    return rest.strip(), images


def image_part(path: Path) -> dict[str, Any]:
    """An OpenAI ``image_url`` content part holding the file as a data URL."""
    media = mimetypes.guess_type(path.name)[0] or "image/png"
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}


class ChatSession:
    """One conversation: the system message, the history and the sampling options."""

    def __init__(
        self,
        backend: ChatBackend,
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.backend = backend
        self.system = system
        self.options: dict[str, Any] = dict(options or {})
        self.history: list[dict[str, Any]] = []

    def messages(self) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def set_parameter(self, name: str, value: str) -> tuple[str, Any]:
        """Set a sampling option for the next answers; returns (field, value)."""
        field, parsed = parse_parameter(name, value)
        if field == "stop":
            stops = list(self.options.get("stop", []))
            self.options["stop"] = [*stops, parsed]
        else:
            self.options[field] = parsed
        return field, parsed

    def clear(self) -> None:
        """Forget the history (the system message and options stay)."""
        self.history.clear()

    def ask(self, text: str) -> Generator[Chunk, None, None]:
        """Send a user message and stream the answer. The answer (or as much of it as came
        before the iterator was closed, e.g. by Ctrl-C) joins the history.

        Raises:
            InvalidRequestError: the message names image files and the model cannot see.
        """
        text, images = split_images(text)
        if images and not self.backend.vision:
            raise InvalidRequestError(
                f"model {self.backend.model!r} cannot see images (it has no vision "
                f"projector); {images[0].name} was not sent"
            )
        content: Any = text
        if images:
            content = [{"type": "text", "text": text}, *(image_part(p) for p in images)]
        self.history.append({"role": "user", "content": content})
        parts: list[str] = []
        stream = self.backend.stream(self.messages(), dict(self.options))
        try:
            for chunk in stream:
                parts.append(chunk.content)
                yield chunk
        except BaseException:
            if not parts:  # nothing came: the question is not part of the conversation
                self.history.pop()
                raise
            self.history.append({"role": "assistant", "content": "".join(parts)})
            raise
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        self.history.append({"role": "assistant", "content": "".join(parts)})


# --- through a running server -------------------------------------------------------------


class RemoteChat:
    """Answers from a running server's ``/v1/chat/completions``."""

    def __init__(self, client: ServerClient, model: str) -> None:
        """Load ``model`` on the server (a registry model it does not serve yet is pulled
        there first).

        Raises:
            ModelNotFoundError: the server neither serves it nor finds it in its registry.
        """
        self.client = client
        row = client.load(model)
        self.model = str(row["id"])
        self.where = f"the server at {client.url}"
        cards = {c["id"]: c for c in client.chat_models()}
        self.vision = "vision" in cards.get(self.model, {}).get("capabilities", [])

    def stream(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> Iterator[Chunk]:
        return self.client.chat(self.model, messages, options)

    def info(self) -> dict[str, str]:
        shown = self.client.show(self.model)
        props = self.client.props(self.model)
        return model_summary(shown, n_ctx=props.get("default_generation_settings", {}).get("n_ctx"))

    def close(self) -> None:
        self.client.close()


def model_summary(shown: dict[str, Any], *, n_ctx: int | None = None) -> dict[str, str]:
    """The lines of ``/show info`` and ``ggufworker show`` from Ollama's ``/api/show`` body."""
    details = shown.get("details") or {}
    meta = shown.get("model_info") or {}
    arch = str(details.get("family") or meta.get("general.architecture") or "")
    out = {
        "architecture": arch,
        "parameters": str(details.get("parameter_size") or ""),
        "context length": str(meta.get(f"{arch}.context_length", "")),
        "embedding length": str(meta.get(f"{arch}.embedding_length", "")),
        "quantization": str(details.get("quantization_level") or ""),
    }
    if n_ctx:
        out["context served"] = str(n_ctx)
    return {k: v for k, v in out.items() if v}


# --- in this process ------------------------------------------------------------------------


class LocalChat:
    """Answers from an engine loaded in this process (one slot; no HTTP server)."""

    def __init__(self, engine: Any, *, model: str) -> None:
        self.engine = engine
        self.model = model
        self.where = "this process"
        self.vision = False  # no multimodal projector is loaded by the engine yet

    @classmethod
    def open(
        cls,
        name: str,
        *,
        home: Path | None = None,
        offline: bool | None = None,
        progress: bool = True,
        n_ctx: int = 4096,
        n_threads: int | None = None,
    ) -> LocalChat:
        """Pull ``name`` when needed (with progress bars), then load it.

        Raises:
            ModelNotFoundError: not a registry name, ``hf://`` reference or GGUF file.
            OfflineError, DownloadError: the model is not cached and cannot be downloaded.
            ModelLoadError: llama.cpp cannot load the file.
        """
        from ggufworker.engine import Engine
        from ggufworker.registry import pull

        path = pull(name, home=home, offline=offline, progress=progress)
        model = path.stem if name.endswith(".gguf") or "/" in name else name
        engine = Engine.load(path, name=model, n_ctx=n_ctx, n_parallel=1, n_threads=n_threads)
        return cls(engine, model=model)

    def stream(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> Iterator[Chunk]:
        from ggufworker import chat_formats as cf
        from ggufworker.engine.types import GenerationRequest, SamplingParams

        info = self.engine.info
        template = info.chat_template
        fmt = cf.detect_format(template)
        spec = cf.detect_reasoning(template)
        rendered = cf.render_with_tools(
            template,
            messages,
            fmt=fmt,
            tools=None,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            reasoning=spec,
            render=self.engine.render_chat,
        )
        parser = cf.OutputParser(
            fmt,
            spec,
            forced_open=rendered.forced_open,
            parse_tools=False,
            split_thinking=True,
            tools=[],
            lead=fmt.output_lead(rendered.prompt),
        )
        fields = {k: v for k, v in options.items() if k in SamplingParams.__dataclass_fields__}
        if "stop" in fields:
            fields["stop"] = tuple(fields["stop"])
        fields.setdefault("max_tokens", None)  # up to the context, as the server does
        params = SamplingParams(**fields, render_special=spec is not None)
        handle = self.engine.submit(
            GenerationRequest(prompt=rendered.prompt, params=params, parse_special=True)
        )
        reader = cf.StreamParser(parser) if parser.active else None
        try:
            for event in handle:
                if reader is None:
                    if event.text:
                        yield Chunk(content=event.text)
                    continue
                delta = reader.feed(event.text) if event.text else None
                if delta is not None and (delta.content or delta.reasoning):
                    yield Chunk(content=delta.content, reasoning=delta.reasoning)
            if reader is not None:
                last, _ = reader.finish()
                if last.content or last.reasoning:
                    yield Chunk(content=last.content, reasoning=last.reasoning)
        finally:
            handle.cancel()  # a no-op once finished; stops the slot when interrupted

    def info(self) -> dict[str, str]:
        from ggufworker.registry.listing import format_size

        info = self.engine.info
        n = info.n_params
        params = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
        return {
            "architecture": info.architecture,
            "parameters": params,
            "context length": str(info.n_ctx_train),
            "context served": str(info.n_ctx),
            "quantization": info.quantization,
            "size": format_size(info.size_bytes),
            "file": info.path,
        }

    def close(self) -> None:
        self.engine.close()
