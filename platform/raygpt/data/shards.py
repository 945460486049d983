"""Token shards on disk: raygpt's Parquet shards and manifest, and the formats we import.

A dataset folder holds `manifest.json` and `train/` and `val/` folders of Parquet shards.
Each shard row is one document's tokens (end-of-text appended) in a list column stored as
uint16 while the vocabulary fits, with the document's content hash beside it, so Ray Data (through pyarrow) reads shards natively and
training can cut windows of any block_size from the stream.

Imported formats: llm.c / modded-nanogpt `.bin` shards (a 256 x int32 header starting with
magic 20240520, then uint16 tokens) and nanoGPT's headerless uint16 `train.bin` / `val.bin`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raygpt import storage
from raygpt.errors import RaygptError
from raygpt.tokenizer import TOKENIZER_FILE, is_own_vocabulary, tokenizer_name

MANIFEST = "manifest.json"
FORMAT = "raygpt-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
LLMC_MAGIC = 20240520
LLMC_HEADER_INTS = 256
# Rows of an imported token stream (which has no document boundaries we can trust).
IMPORT_CHUNK_TOKENS = 1 << 16


def dataset_dir(dataset: str, tokenizer: str) -> str:
    """A config's `data.dataset` as a location (a folder or a URI such as s3://bucket/data):
    'stdlib' is prepared into data/stdlib_<tokenizer name>. Absolute, because Ray Train
    workers and Tune trials do not run in the driver's working directory."""
    location = f"data/stdlib_{tokenizer_name(tokenizer)}" if dataset == "stdlib" else dataset
    return storage.absolute(location)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class SplitStats:
    documents: int = 0
    tokens: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)  # file, documents, tokens, sha256


@dataclass
class Manifest:
    tokenizer: str
    vocab_size: int
    eot_token: int
    token_dtype: str
    splits: dict[str, SplitStats]
    skipped: dict[str, int] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    files_read: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tokenizer": self.tokenizer,
            "vocab_size": self.vocab_size,
            "eot_token": self.eot_token,
            "token_dtype": self.token_dtype,
            "files_read": self.files_read,
            "skipped": self.skipped,
            "splits": {name: vars(stats) for name, stats in self.splits.items()},
            "inputs": self.inputs,
            "extra": self.extra,
        }

    def windows(self, split: str, block_size: int) -> int:
        """Upper bound on a split's training windows of block_size, to check a config early."""
        stats = self.splits.get(split)
        return 0 if stats is None else max(0, (stats.tokens - 1) // block_size)

    def shard_paths(self, root: str | Path, split: str) -> list[str]:
        """Paths, or URIs when the dataset is at one (Ray Data and pyarrow read both)."""
        return [storage.join(root, shard["file"]) for shard in self.splits[split].shards]


def write_tokenizer(root: Path, tokenizer) -> None:
    """A dataset made with a model's own vocabulary keeps its tokenizer.json beside the shards:
    training reads it from there, and every checkpoint carries it on."""
    if is_own_vocabulary(tokenizer.name):
        (root / TOKENIZER_FILE).write_text(tokenizer.tokenizer_json)


def read_tokenizer_json(root: str | Path, manifest: Manifest) -> str | None:
    if not is_own_vocabulary(manifest.tokenizer):
        return None
    try:
        return storage.read_text(storage.join(root, TOKENIZER_FILE))
    except FileNotFoundError:
        raise RaygptError(
            f"{root}: {TOKENIZER_FILE} is missing (the shards are {manifest.tokenizer})"
        ) from None


def write_manifest(root: Path, manifest: Manifest) -> Path:
    path = root / MANIFEST
    path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return path


def read_manifest(root: str | Path) -> Manifest:
    """The manifest of a dataset folder or URI; a clear error when there is none or it is broken."""
    path = storage.join(root, MANIFEST)
    try:
        raw = json.loads(storage.read_text(path))
    except FileNotFoundError:
        if not storage.is_dir(root):
            raise RaygptError(
                f"dataset folder not found: {root} (make one with jobs/prepare_data.py)"
            ) from None
        raise RaygptError(
            f"{root} has no {MANIFEST}: not a dataset made by jobs/prepare_data.py"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RaygptError(f"{path} is corrupt: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise RaygptError(f"{path} is not a raygpt shard manifest")
    try:
        splits = {name: SplitStats(**stats) for name, stats in raw["splits"].items()}
        return Manifest(
            tokenizer=raw["tokenizer"],
            vocab_size=int(raw["vocab_size"]),
            eot_token=int(raw["eot_token"]),
            token_dtype=raw["token_dtype"],
            splits=splits,
            skipped=raw.get("skipped", {}),
            inputs=raw.get("inputs", []),
            files_read=raw.get("files_read", 0),
            extra=raw.get("extra", {}),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RaygptError(f"{path} is missing or has a bad field: {err}") from None


class ShardWriter:
    """Writes one split's documents into Parquet shards of about `shard_tokens` tokens each.

    Documents arrive in a fixed order and are cut into shards by count, so the same input
    always gives byte-identical shards (checked by sha256 in the manifest).
    """

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        (root / split).mkdir(parents=True, exist_ok=True)
        self.stats = SplitStats()
        self._pending: list[np.ndarray] = []
        self._hashes: list[str | None] = []
        self._pending_tokens = self._pending_documents = 0

    def add(self, tokens: np.ndarray, documents: int = 1, doc_hash: str | None = None) -> None:
        """Append one row: a document (with its content hash), or a chunk of an imported
        stream holding `documents` documents."""
        self._pending.append(np.asarray(tokens, dtype=self.dtype))
        self._hashes.append(doc_hash)
        self._pending_tokens += len(tokens)
        self._pending_documents += documents
        if self._pending_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        name = f"{self.split}/{self.split}_{len(self.stats.shards):05d}.parquet"
        lengths = np.array([len(t) for t in self._pending], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = pa.array(np.concatenate(self._pending), type=pa.from_numpy_dtype(self.dtype))
        tokens = pa.ListArray.from_arrays(pa.array(offsets), values)
        table = pa.table({"tokens": tokens, "hash": pa.array(self._hashes, type=pa.string())})
        path = self.root / name
        # lz4: half the size of raw tokens, and cheap to write and read (zstd costs ~3x the time).
        pq.write_table(table, path, compression="lz4", use_dictionary=False)
        self.stats.shards.append(
            {
                "file": name,
                "documents": self._pending_documents,
                "tokens": int(lengths.sum()),
                "sha256": file_sha256(path),
            }
        )
        self.stats.documents += self._pending_documents
        self.stats.tokens += int(lengths.sum())
        self._pending, self._hashes = [], []
        self._pending_tokens = self._pending_documents = 0


# Shards this process has checked (path, size, mtime): each is read and hashed once.
_verified: set[tuple[str, int, int]] = set()


def verify_shards(root: str | Path, manifest: Manifest, splits: tuple[str, ...] = SPLITS) -> None:
    """Check every shard of `splits` before anything trains or evaluates on it: its sha256
    is the manifest's, and its token ids fit the vocabulary. One error names the first bad
    shard. A shard is checked once per process (again only if its size or time changes)."""
    for split in splits:
        stats = manifest.splits.get(split)
        for shard in stats.shards if stats else []:
            path = storage.join(root, shard["file"])
            found = storage.listing(path)
            if not found:
                raise RaygptError(
                    f"{path} is missing (the manifest lists it): prepare the dataset again"
                )
            key = (storage.absolute(path), *next(iter(found.values())))
            if key in _verified:
                continue
            data = storage.read_bytes(path)
            digest = hashlib.sha256(data).hexdigest()
            if digest != shard.get("sha256"):
                raise RaygptError(
                    f"{path}: sha256 {digest[:16]}... is not the manifest's "
                    f"{str(shard.get('sha256'))[:16]}...: the shard changed or is corrupt; "
                    "prepare the dataset again"
                )
            tokens = pq.read_table(pa.BufferReader(data), columns=["tokens"]).column("tokens")
            values = tokens.combine_chunks().values
            largest = pc.max(values).as_py() if len(values) else None
            if largest is not None and largest >= manifest.vocab_size:
                raise RaygptError(
                    f"{path}: token id {largest} is outside the {manifest.tokenizer} vocabulary "
                    f"({manifest.vocab_size} tokens)"
                )
            _verified.add(key)


def cut_windows(tokens: np.ndarray, block_size: int) -> np.ndarray:
    """Non-overlapping windows of block_size + 1 tokens (neighbours share one token)."""
    count = (len(tokens) - 1) // block_size
    if count <= 0:
        return np.empty((0, block_size + 1), dtype=tokens.dtype)
    starts = np.arange(count) * block_size
    return tokens[starts[:, None] + np.arange(block_size + 1)]


def shard_tokens(path: str) -> np.ndarray:
    """One shard's documents as one token stream (their end-of-text tokens between them)."""
    return pq.read_table(path).column("tokens").combine_chunks().values.to_numpy()


def split_tokens(data_dir: str | Path, split: str) -> np.ndarray:
    """A whole split's token stream, in memory (benchmarks on small corpora)."""
    manifest = read_manifest(data_dir)
    return np.concatenate([shard_tokens(p) for p in manifest.shard_paths(data_dir, split)])


def val_windows(data_dir: str | Path, block_size: int, count: int) -> np.ndarray:
    """The first `count` windows of the val split's token stream, read straight from the
    shards: training's evaluations, the evaluate job and the INT8 gate all use these."""
    manifest = read_manifest(data_dir)
    verify_shards(data_dir, manifest, ("val",))
    needed = count * block_size + 1
    pieces, have = [], 0
    for path in manifest.shard_paths(data_dir, "val"):
        tokens = shard_tokens(path)
        pieces.append(tokens)
        have += len(tokens)
        if have >= needed:
            break
    if not pieces:
        raise RaygptError(f"{data_dir} has no val shards to evaluate on")
    windows = cut_windows(np.concatenate(pieces), block_size)[:count]
    if len(windows) == 0:
        raise RaygptError(f"{data_dir}: the val split is shorter than one window of {block_size}")
    return windows


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_llmc_bin(path: str | Path) -> np.ndarray:
    """Tokens of an llm.c / modded-nanogpt shard, memory-mapped (never read whole)."""
    path = Path(path)
    header = np.fromfile(path, dtype=np.int32, count=LLMC_HEADER_INTS)
    if len(header) < LLMC_HEADER_INTS or header[0] != LLMC_MAGIC:
        raise RaygptError(f"{path} is not an llm.c shard (no magic {LLMC_MAGIC} in its header)")
    if header[1] != 1:
        raise RaygptError(f"{path}: llm.c shard version {header[1]} is not supported (only 1)")
    count = int(header[2])
    expected = LLMC_HEADER_INTS * 4 + count * 2
    if path.stat().st_size != expected:
        raise RaygptError(
            f"{path}: header says {count} tokens ({expected} bytes) but the file has "
            f"{path.stat().st_size} bytes"
        )
    return np.memmap(path, dtype=np.uint16, mode="r", offset=LLMC_HEADER_INTS * 4, shape=(count,))


def write_llmc_bin(path: str | Path, tokens: np.ndarray) -> None:
    header = np.zeros(LLMC_HEADER_INTS, dtype=np.int32)
    header[:3] = (LLMC_MAGIC, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def read_nanogpt_bin(path: str | Path) -> np.ndarray:
    """nanoGPT's train.bin / val.bin: headerless uint16 tokens, memory-mapped."""
    path = Path(path)
    size = path.stat().st_size
    if size % 2:
        raise RaygptError(f"{path} has an odd byte count: not a uint16 token file")
    with open(path, "rb") as f:
        if f.read(4) == np.int32(LLMC_MAGIC).tobytes():
            raise RaygptError(f"{path} has an llm.c header: import it as --format llmc")
    return np.memmap(path, dtype=np.uint16, mode="r")
