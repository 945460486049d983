"""A model's own BPE vocabulary from a Hugging Face tokenizer.json (SmolLM2, Llama 3, Qwen2,
Mistral, ...), run by the `tokenizers` library: the ids are transformers' ids for the same
file. raygpt keeps the file inside its checkpoints and datasets; GGUF imports write one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

from raygpt.errors import TokenizerError
from raygpt.tokenizer.base import EOT_TEXT

# Names the end of a document goes by, in the order they are looked for.
END_OF_TEXT = (EOT_TEXT, "<|end_of_text|>", "</s>", "<|im_end|>", "<eos>")
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's byte fallback


def byte_stand_ins() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as a printable character. Bytes that print
    (33-126, 161-172, 174-255) stand for themselves; the rest take code points from 256 on."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    stand_ins = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in stand_ins:
            stand_ins[b] = chr(256 + extra)
            extra += 1
    return stand_ins


class BPETokenizer:
    """Special-token strings in the text (<|im_start|>, <filename>) become their special ids,
    as transformers' tokenizer of the same file does; GPT-2's tokenizer keeps them plain text."""

    def __init__(self, tokenizer_json: str, special_tokens: dict[str, int] | None = None) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            spec = json.loads(tokenizer_json)
            self._tokenizer = HFTokenizer.from_str(tokenizer_json)
        except Exception as err:  # the library's own error types
            raise TokenizerError(f"not a readable tokenizer.json: {err}") from None
        self.tokenizer_json = tokenizer_json
        self.sha256 = hashlib.sha256(tokenizer_json.encode()).hexdigest()
        self.name = f"bpe-{self.sha256[:8]}"
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        self.special = {
            t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")
        }
        self._pieces = _token_bytes(vocab, self.vocab_size, _is_byte_level(spec), self.special)
        known = dict(special_tokens or {})
        names = [self.special.get(text) for text in END_OF_TEXT]
        self.eot_token = known.get("eot", next((i for i in names if i is not None), None))
        if self.eot_token is None:
            self.eot_token = known.get("eos", 0)
        self.stop_tokens = frozenset(
            i for i in (self.eot_token, known.get("eos"), known.get("eot")) if i is not None
        )

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encoded]

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.uint32)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        pieces = self._pieces
        try:
            return b"".join(pieces[i] for i in ids)
        except (IndexError, TypeError):
            bad = [i for i in ids if not 0 <= i < len(pieces)]
            raise ValueError(f"token ids {bad[:4]} are outside the vocabulary") from None


def _is_byte_level(spec: dict) -> bool:
    """Whether tokens are spelled in GPT-2's byte alphabet (a ByteLevel decoder)."""
    decoder = spec.get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(part.get("type") == "ByteLevel" for part in parts)


def _token_bytes(
    vocab: dict[str, int], size: int, byte_level: bool, special: dict[str, int]
) -> list[bytes]:
    """Each id's raw bytes, for streaming text out token by token."""
    byte_of = {ch: b for b, ch in byte_stand_ins().items()}
    pieces = [b""] * size
    for token, i in vocab.items():
        if token in special:
            pieces[i] = token.encode()
        elif byte_level and all(ch in byte_of for ch in token):
            pieces[i] = bytes(byte_of[ch] for ch in token)
        elif match := BYTE_PIECE.fullmatch(token):
            pieces[i] = bytes([int(match.group(1), 16)])
        else:  # sentencepiece: "▁" is a space
            pieces[i] = token.replace("\u2581", " ").encode()
    return pieces
