"""Tokenizers, named by a spec: 'gpt2' (tiktoken's GPT-2 BPE, the default), 'byte' (UTF-8
bytes, tiny experiments), or the path of a tokenizer.json or of a folder holding one (a
raygpt or Hugging Face checkpoint, a dataset): a model's own BPE vocabulary.

    base.py  the protocol every tokenizer follows
    gpt2.py  GPT-2 through tiktoken, and where its ranks are found offline
    byte.py  bytes as tokens
    bpe.py   a tokenizer.json through the `tokenizers` library
"""

from __future__ import annotations

import contextlib
import functools
import json

from raygpt import storage
from raygpt.errors import TokenizerError
from raygpt.tokenizer.base import EOT_TEXT, Tokenizer
from raygpt.tokenizer.bpe import BPETokenizer
from raygpt.tokenizer.byte import ByteTokenizer
from raygpt.tokenizer.gpt2 import (
    GPT2_EOT,
    GPT2_VOCAB_SIZE,
    R50K_CACHE_NAME,
    R50K_SHA256,
    GPT2Tokenizer,
    candidate_rank_files,
    default_cache_dir,
    gpt2_encoding,
    parse_tiktoken_ranks,
)

TOKENIZER_NAMES = ("gpt2", "byte")  # the built-in ones; anything else is a path
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "raygpt.json"  # a raygpt checkpoint's metadata: its special token ids


def tokenizer_name(spec: str) -> str:
    """The name a spec's tokenizer goes by (datasets and checkpoints record it): the built-in
    ones by their own, a tokenizer.json by its content ('bpe-<sha256 prefix>')."""
    return spec if spec in TOKENIZER_NAMES else get_tokenizer(spec).name


def is_own_vocabulary(name: str) -> bool:
    """Whether a recorded tokenizer name is a tokenizer.json (kept beside the data)."""
    return name.startswith("bpe-")


@functools.cache
def get_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer a spec names, built once per process."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        return GPT2Tokenizer(gpt2_encoding())
    return BPETokenizer(*read_tokenizer_json(spec))


def read_tokenizer_json(location: str) -> tuple[str, dict[str, int]]:
    """tokenizer.json's text at a path or URI (the file, or a folder holding it), and the
    special token ids of the raygpt checkpoint beside it, if it is one."""
    folder = location
    if not location.endswith(".json"):
        location = storage.join(location, TOKENIZER_FILE)
    else:
        folder = storage.parent_of(location)
    try:
        text = storage.read_text(location)
    except (FileNotFoundError, storage.StorageError):
        raise TokenizerError(
            f"unknown tokenizer '{folder}': not one of {list(TOKENIZER_NAMES)}, and no "
            f"{TOKENIZER_FILE} at {location}"
        ) from None
    special = {}
    with contextlib.suppress(FileNotFoundError, KeyError, TypeError, json.JSONDecodeError):
        special = json.loads(storage.read_text(storage.join(folder, META_FILE)))["special_tokens"]
    return text, special


__all__ = [
    "EOT_TEXT",
    "GPT2_EOT",
    "GPT2_VOCAB_SIZE",
    "R50K_CACHE_NAME",
    "R50K_SHA256",
    "TOKENIZER_NAMES",
    "BPETokenizer",
    "ByteTokenizer",
    "GPT2Tokenizer",
    "Tokenizer",
    "candidate_rank_files",
    "default_cache_dir",
    "get_tokenizer",
    "gpt2_encoding",
    "is_own_vocabulary",
    "parse_tiktoken_ranks",
    "tokenizer_name",
]
