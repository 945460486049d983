"""Tokenizers: tiktoken's GPT-2 BPE (the default) and a byte-level one for tiny experiments.

The GPT-2 ranks are read from a local cache that `python -m raygpt.tokenizer_setup` fills
offline (see that module); with internet, tiktoken's own download is the fallback.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from raygpt.errors import TokenizerError

EOT_TEXT = "<|endoftext|>"
GPT2_EOT = 50256
GPT2_VOCAB_SIZE = 50257
# tiktoken's r50k_base is GPT-2's BPE; its cache file is named by the sha1 of this URL.
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
R50K_CACHE_NAME = hashlib.sha1(R50K_URL.encode()).hexdigest()

TOKENIZER_NAMES = ("gpt2", "byte")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_token: int

    def encode(self, text: str) -> list[int]:
        """Encode text; special-token strings in it are treated as plain text."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def encode_array(self, text: str) -> np.ndarray:
        """Like encode, as a numpy array (no Python int list in between: faster in bulk)."""
        ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes, for streaming: a token may end in the middle of a UTF-8 character."""
        ...


class GPT2Tokenizer:
    """GPT-2 BPE through tiktoken; ids match tiktoken's `gpt2` encoding exactly."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_token = GPT2_EOT

    def __init__(self, encoding) -> None:
        self._enc = encoding

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=1)

    def encode_array(self, text: str) -> np.ndarray:
        # With no special tokens allowed or checked, encode is encode_ordinary.
        return self._enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, plus 256 as end-of-text: no files, no vocabulary."""

    name = "byte"
    vocab_size = 257
    eot_token = 256

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


@functools.cache
def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called `name` ('gpt2' or 'byte'), built once per process."""
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer(_gpt2_encoding())
    raise TokenizerError(f"unknown tokenizer '{name}'; choose one of {list(TOKENIZER_NAMES)}")


def default_cache_dir() -> Path:
    """Where setup writes the ranks: $RAYGPT_CACHE_DIR, the source checkout's .cache, or ~/.cache."""
    if os.environ.get("RAYGPT_CACHE_DIR"):
        return Path(os.environ["RAYGPT_CACHE_DIR"]) / "tiktoken"
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache" / "tiktoken"
    return Path.home() / ".cache" / "raygpt" / "tiktoken"


def candidate_rank_files() -> list[Path]:
    """Every place a provisioned r50k_base file may be, in the order they are tried."""
    dirs = [default_cache_dir()]
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        dirs.insert(0, Path(os.environ["TIKTOKEN_CACHE_DIR"]))
    dirs.append(Path(tempfile.gettempdir()) / "data-gym-cache")  # tiktoken's own default
    return [d / R50K_CACHE_NAME for d in dirs]


def parse_tiktoken_ranks(data: bytes) -> dict[bytes, int]:
    """Parse a `.tiktoken` file (base64 token, space, rank per line) after checking its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        raise TokenizerError(f"GPT-2 BPE ranks have sha256 {digest}, expected {R50K_SHA256}")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _gpt2_encoding(allow_download: bool = True):
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    for path in candidate_rank_files():
        if path.is_file():
            return tiktoken.Encoding(
                name="gpt2",
                pat_str=r50k_pat_str,
                mergeable_ranks=parse_tiktoken_ranks(path.read_bytes()),
                special_tokens={EOT_TEXT: GPT2_EOT},
                explicit_n_vocab=GPT2_VOCAB_SIZE,
            )
    problem = "download not allowed"
    if allow_download:
        try:  # with internet, tiktoken downloads and caches the files itself
            return tiktoken.get_encoding("gpt2")
        except Exception as err:
            problem = f"download failed: {type(err).__name__}"
    raise TokenizerError(
        f"GPT-2 BPE ranks are not provisioned ({problem}). Run `make tokenizer` (or `python -m raygpt.tokenizer_setup`), "
        "which takes them offline from the openai-whisper sdist on the package index; "
        f"looked in: {', '.join(str(p.parent) for p in candidate_rank_files())}"
    )
