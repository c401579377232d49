"""The interactive chat of ``ggufworker run`` (and its one-shot form): prompts, slash
commands, streamed answers, Ctrl-C to stop an answer.

Commands follow ``ollama run``: ``/set parameter NAME VALUE``, ``/set system TEXT``,
``/show info|parameters|system``, ``/clear``, ``/bye``, ``/?``; ``\"\"\"`` starts and ends a
multi-line message. Input goes through :mod:`readline` when it is available, so arrow keys
and the history of this session work.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from ggufworker.client.chat import PARAMETERS, ChatSession
from ggufworker.client.server import Chunk
from ggufworker.errors import GGUFWorkerError

PROMPT = ">>> "
MORE = "... "
FENCE = '"""'
HELP = f"""Available commands:
  /set parameter NAME VALUE   set a sampling parameter ({", ".join(sorted(PARAMETERS))})
  /set system TEXT            set the system message
  /show info                  the model's details
  /show parameters            the parameters set in this session
  /show system                the system message
  /clear                      forget the conversation so far
  /bye                        exit
  /?, /help                   this help

Use {FENCE} to begin and end a multi-line message.
Put an image file's path in a message to send the image (models that can see).
Ctrl-C stops an answer; Ctrl-D or /bye exits."""

Reader = Callable[[str], str]


def write_answer(chunks: Iterator[Chunk], out: TextIO) -> None:
    """Print an answer as it streams; thinking (if the model thinks) comes first, marked."""
    thinking = False
    for chunk in chunks:
        if chunk.reasoning:
            if not thinking:
                out.write("Thinking...\n")
                thinking = True
            out.write(chunk.reasoning)
        if chunk.content:
            if thinking:
                out.write("\n...done thinking.\n\n")
                thinking = False
            out.write(chunk.content)
        out.flush()


def run_once(session: ChatSession, prompt: str, *, out: TextIO = sys.stdout) -> int:
    """Answer one prompt, streamed to ``out``; 0 when it finished.

    Raises:
        GGUFWorkerError: the model or server failed (the caller prints one line).
    """
    write_answer(session.ask(prompt), out)
    out.write("\n")
    out.flush()
    return 0


def _read_message(first: str, read: Reader) -> str:
    """The rest of a ``\"\"\"`` message: lines up to the one that ends with ``\"\"\"``."""
    text = first.lstrip()[len(FENCE) :]
    if text.rstrip().endswith(FENCE):
        return text.rstrip()[: -len(FENCE)]
    lines = [text]
    while True:
        line = read(MORE)
        if line.rstrip().endswith(FENCE):
            lines.append(line.rstrip()[: -len(FENCE)])
            return "\n".join(lines).strip("\n")
        lines.append(line)


def _is_command(text: str) -> bool:
    """A slash command, not a message that starts with a file path."""
    if not text.startswith("/"):
        return False
    first = text.split(maxsplit=1)[0]
    return not Path(first).exists()


class Repl:
    """One interactive session over a :class:`ChatSession`."""

    def __init__(
        self,
        session: ChatSession,
        *,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
        read: Reader = input,
    ) -> None:
        self.session = session
        self.out = out
        self.err = err
        self.read = read

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, text: str) -> None:
        self.err.write(f"Error: {text}\n")
        self.err.flush()

    def run(self) -> int:
        """Read messages and commands until ``/bye`` or end of input; returns the exit code."""
        self.say(f"Chatting with {self.session.backend.model} ({self.session.backend.where}).")
        self.say("Type /? for help, /bye to exit.")
        while True:
            try:
                line = self.read(PROMPT)
                if line.lstrip().startswith(FENCE):
                    line = _read_message(line, self.read)
            except EOFError:
                self.out.write("\n")
                return 0
            except KeyboardInterrupt:
                self.say("\nUse Ctrl + d or /bye to exit.")
                continue
            text = line.strip()
            if not text:
                continue
            if _is_command(text):
                if self.command(text):
                    return 0
                continue
            self.answer(line)

    def answer(self, text: str) -> None:
        chunks = self.session.ask(text)
        try:
            write_answer(chunks, self.out)
            self.out.write("\n\n")
        except KeyboardInterrupt:
            chunks.close()
            self.out.write("\n\n")
        except GGUFWorkerError as exc:
            self.out.write("\n")
            self.error(str(exc))
        self.out.flush()

    def command(self, text: str) -> bool:
        """Run a slash command; True when the session should end."""
        words = text.split(maxsplit=2)
        name = words[0].lower()
        if name in ("/bye", "/exit", "/quit"):
            return True
        if name in ("/?", "/help"):
            self.say(HELP)
        elif name == "/clear":
            self.session.clear()
            self.say("Cleared session context.")
        elif name == "/set":
            self._set(text)
        elif name == "/show":
            self._show(words[1] if len(words) > 1 else "")
        else:
            self.say(f"Unknown command '{words[0]}'. Type /? for help.")
        return False

    def _set(self, text: str) -> None:
        parts = text.split(maxsplit=3)
        what = parts[1].lower() if len(parts) > 1 else ""
        if what == "system":
            system = text.split(maxsplit=2)[2] if len(text.split(maxsplit=2)) > 2 else ""
            self.session.system = system.strip().strip('"') or None
            self.say("Set system message." if self.session.system else "Cleared system message.")
        elif what == "parameter" and len(parts) == 4:
            try:
                field, value = self.session.set_parameter(parts[2], parts[3])
            except GGUFWorkerError as exc:
                self.error(str(exc))
                return
            self.say(f"Set parameter '{parts[2]}' to '{value}'.")
        else:
            self.say("Usage: /set parameter NAME VALUE | /set system TEXT")

    def _show(self, what: str) -> None:
        what = what.strip().lower()
        if what == "info":
            try:
                info = self.session.backend.info()
            except GGUFWorkerError as exc:
                self.error(str(exc))
                return
            width = max((len(k) for k in info), default=0) + 4
            self.say("  Model")
            for key, value in info.items():
                self.say(f"    {key.ljust(width)}{value}")
        elif what == "parameters":
            if not self.session.options:
                self.say("No parameters set in this session.")
            for key, value in self.session.options.items():
                self.say(f"{key:<20}{value}")
        elif what == "system":
            self.say(self.session.system or "No system message set.")
        else:
            self.say("Usage: /show info | /show parameters | /show system")


def enable_line_editing() -> None:
    """Arrow keys and a history of this session's lines in ``input()`` (where readline is)."""
    try:
        import readline  # noqa: F401  (importing it is what enables it)
    except ImportError:
        pass
