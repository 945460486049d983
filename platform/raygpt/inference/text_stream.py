"""Generated token ids to streamed text: whole characters only, stop strings cut exactly.

A token may end in the middle of a UTF-8 character, and the text just produced may be the
start of a stop string that the next token completes. So each push returns only the text
that is final: complete characters that cannot belong to a stop string. What is held back
comes out with the next push, or with `finish`.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from raygpt.tokenizer import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""  # every complete character decoded so far
        self._emitted = 0  # characters of _text already returned
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one generated token; return the text that became final. Sets `stopped` when
        a stop string appears: the text before it is returned, the stop string never is."""
        if self.stopped:
            return ""
        search_from = max(0, self._emitted - self._longest_stop)
        self._text += self._decoder.decode(self._tokenizer.decode_bytes([token]))
        cut = self._first_stop(search_from)
        if cut is not None:
            self.stopped = True
            self._text = self._text[:cut]
            return self._take(cut)
        return self._take(len(self._text) - self._held_back())

    def finish(self) -> str:
        """The rest, at the end of generation (an unfinished character becomes U+FFFD)."""
        if not self.stopped:
            self._text += self._decoder.decode(b"", final=True)
        return self._take(len(self._text))

    def _take(self, end: int) -> str:
        piece = self._text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return piece

    def _first_stop(self, search_from: int) -> int | None:
        hits = [i for s in self._stop if (i := self._text.find(s, search_from)) >= 0]
        return min(hits, default=None)

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        text = self._text
        for size in range(min(len(text), self._longest_stop), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0
