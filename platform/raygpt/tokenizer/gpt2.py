"""GPT-2's BPE through tiktoken (the default tokenizer), and where its ranks are found.

The GPT-2 ranks are read from a local cache that `python -m raygpt.tokenizer_setup` fills
offline (see that module); with internet, tiktoken's own download is the fallback.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from raygpt import storage
from raygpt.errors import TokenizerError
from raygpt.tokenizer.base import EOT_TEXT

GPT2_EOT = 50256
GPT2_VOCAB_SIZE = 50257
# tiktoken's r50k_base is GPT-2's BPE; its cache file is named by the sha1 of this URL.
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
R50K_CACHE_NAME = hashlib.sha1(R50K_URL.encode()).hexdigest()


class GPT2Tokenizer:
    """GPT-2 BPE through tiktoken; ids match tiktoken's `gpt2` encoding exactly."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_token = GPT2_EOT
    stop_tokens = frozenset({GPT2_EOT})

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


def default_cache_dir() -> Path:
    """Where setup writes the ranks: raygpt's cache root (storage.cache_root) / tiktoken."""
    return storage.cache_root() / "tiktoken"


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


def gpt2_encoding(allow_download: bool = True):
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
