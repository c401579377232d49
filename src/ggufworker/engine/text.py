"""Streaming text assembly: UTF-8-safe deltas and stop strings matched across tokens.

Tokens are byte pieces; a multi-byte character can span two tokens, and a stop string can span
several. :class:`TextStream` holds back exactly what is still undecided (an incomplete UTF-8
sequence, or a tail that may be the start of a stop string) and releases the rest.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Turns a sequence of token byte pieces into printable deltas.

    Args:
        stop: stop strings; generation ends at the first occurrence, which is not emitted.
    """

    __slots__ = ("_decoder", "_held", "_stop", "_max_stop", "stopped", "matched")

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self._stop = tuple(s for s in stop if s)
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self.stopped = False
        #: the stop string that ended the text (the earliest found), once :attr:`stopped`
        self.matched: str | None = None

    def push(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit.

        After a stop string is found :attr:`stopped` is true and the text before it is returned.
        """
        text = self._decoder.decode(piece)
        if not self._stop:
            return text
        held = self._held + text
        best = -1
        for s in self._stop:
            i = held.find(s)
            if i >= 0 and (best < 0 or i < best):
                best = i
                self.matched = s
        if best >= 0:
            self.stopped = True
            self._held = ""
            return held[:best]
        keep = self._partial_suffix(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        n = min(len(text), self._max_stop - 1)
        for k in range(n, 0, -1):
            tail = text[-k:]
            for s in self._stop:
                if s.startswith(tail):
                    return k
        return 0

    def flush(self) -> str:
        """End of generation: release what was held back (a cut character becomes U+FFFD)."""
        rest = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return rest
