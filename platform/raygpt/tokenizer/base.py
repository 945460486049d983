"""What every tokenizer offers: the protocol the data pipeline, the engine and the service use."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

EOT_TEXT = "<|endoftext|>"


class Tokenizer(Protocol):
    name: str  # 'gpt2', 'byte', or 'bpe-<hash>' for a tokenizer.json
    vocab_size: int
    eot_token: int  # ends (and separates) documents
    stop_tokens: frozenset[int]  # any of these ends a completion: end-of-text, end-of-turn

    def encode(self, text: str) -> list[int]:
        """Encode text, adding no BOS or EOS."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def encode_array(self, text: str) -> np.ndarray:
        """Like encode, as a numpy array (no Python int list in between: faster in bulk)."""
        ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes, for streaming: a token may end in the middle of a UTF-8 character."""
        ...
