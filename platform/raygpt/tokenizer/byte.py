"""UTF-8 bytes as tokens: no files, no vocabulary, for tiny experiments."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from raygpt.tokenizer.base import EOT_TEXT


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, plus 256 as end-of-text."""

    name = "byte"
    vocab_size = 257
    eot_token = 256
    stop_tokens = frozenset({256})

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        out = bytearray()
        for i in ids:
            if i == self.eot_token:
                out += EOT_TEXT.encode()
            elif 0 <= i < 256:
                out.append(i)
            else:
                raise ValueError(f"token id {i} is outside the byte tokenizer's vocabulary")
        return bytes(out)
