"""Corpus to token shards, on Ray Data.

Read files (or JSONL / Parquet rows) -> decode UTF-8, filter, hash, split -> tokenize in a
pool of actors that build the encoder once -> shards written in input order with a
manifest. Reading, decoding and tokenizing run in parallel across the cluster; the driver
only receives token arrays, drops exact duplicates by content hash (keeping the first in
input order) and appends to the shards, so the output does not depend on how many
workers there were.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raygpt import storage
from raygpt.data.corpus import (
    DUPLICATE,
    KEPT,
    CorpusInputs,
    content_hash,
    decode_document,
    resolve_inputs,
    size_status,
    split_of,
)
from raygpt.data.shards import (
    MANIFEST,
    SPLITS,
    Manifest,
    ShardWriter,
    token_dtype,
    write_manifest,
    write_tokenizer,
)
from raygpt.errors import RaygptError
from raygpt.ray_runtime import cluster_cpus
from raygpt.tokenizer import get_tokenizer

READ_CPUS = 0.25  # reading files is I/O: leave the cores to the tokenizers
TOKENIZER_CPUS = 0.75
DOCS_PER_BATCH = 64
FILES_PER_BLOCK = 8  # the fewest files a read block holds: tiny blocks cost more than they spread


@dataclass
class PrepareOptions:
    out_dir: str
    inputs: list[str] = field(default_factory=lambda: ["stdlib"])
    tokenizer: str = "gpt2"
    include: list[str] | None = None
    exclude: list[str] | None = None
    text_column: str = "text"
    val_fraction: float = 0.05
    min_chars: int = 1
    max_chars: int | None = None
    shard_tokens: int = 1 << 24
    tokenizer_actors: int | None = None  # default: one per CPU of the cluster
    overwrite: bool = False
    include_hidden: bool = False  # dotfiles and dot-folders (.env, .git-credentials)
    follow_symlinks: bool = False  # symlinks that lead out of an input folder

    def check(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise RaygptError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.min_chars < 0 or (self.max_chars is not None and self.max_chars < self.min_chars):
            raise RaygptError(
                f"bad size filter: min_chars={self.min_chars}, max_chars={self.max_chars}"
            )
        if self.shard_tokens < 1:
            raise RaygptError(f"--shard-tokens must be >= 1, got {self.shard_tokens}")
        if self.tokenizer_actors is not None and self.tokenizer_actors < 1:
            raise RaygptError(f"--tokenizer-actors must be >= 1, got {self.tokenizer_actors}")


@dataclass
class PrepareResult:
    manifest: Manifest
    out_dir: str  # a folder or a URI
    seconds: float
    bytes_read: int

    @property
    def tokens(self) -> int:
        return sum(split.tokens for split in self.manifest.splits.values())


class DocumentTokenizer:
    """Ray Data actor: raw documents -> (status, hash, split, tokens + end-of-text).

    Built once per actor: the BPE ranks load once, not once per batch.
    """

    def __init__(
        self, tokenizer: str, val_fraction: float, min_chars: int, max_chars: int | None
    ) -> None:
        self.tokenizer = get_tokenizer(tokenizer)
        self.dtype = token_dtype(self.tokenizer.vocab_size)
        self.val_fraction, self.min_chars, self.max_chars = val_fraction, min_chars, max_chars

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = batch.column("path").to_pylist()
        # Table rows arrive as bytes, file rows as paths (with null bytes where a batch mixes
        # both): files are read here, so raw files never travel through the object store.
        given = batch.column("bytes").to_pylist() if "bytes" in batch.column_names else paths
        raw = [
            data if isinstance(data, bytes) else _read_file(path)
            for data, path in zip(given, paths, strict=True)
        ]
        statuses, hashes, splits, lengths, pieces = [], [], [], [], []
        eot = np.array([self.tokenizer.eot_token], dtype=self.dtype)
        for data in raw:
            text, status = decode_document(data)
            if status == KEPT:
                status = size_status(text, self.min_chars, self.max_chars)
            statuses.append(status)
            if status != KEPT:
                hashes.append("")
                splits.append("")
                lengths.append(0)
                continue
            doc_hash = content_hash(text)
            hashes.append(doc_hash)
            splits.append(split_of(doc_hash, self.val_fraction))
            ids = self.tokenizer.encode_array(text).astype(self.dtype, copy=False)
            pieces += [ids, eot]  # documents end with end-of-text
            lengths.append(len(ids) + 1)
        flat = np.concatenate(pieces) if pieces else np.empty(0, dtype=self.dtype)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        return pa.table(
            {
                "path": batch.column("path"),
                "status": statuses,
                "hash": hashes,
                "split": splits,
                "n_bytes": pa.array([len(data) for data in raw], type=pa.int64()),
                "tokens": tokens,
            }
        )


def plan_inputs(options: PrepareOptions) -> CorpusInputs:
    """Every check that needs no Ray: options, tokenizer, inputs, table columns."""
    options.check()
    get_tokenizer(options.tokenizer)  # fails here, clearly, if the BPE is not provisioned
    inputs = resolve_inputs(
        options.inputs,
        options.include,
        options.exclude,
        options.include_hidden,
        options.follow_symlinks,
    )
    _check_tables(inputs.tables, options.text_column)
    return inputs


def prepare_dataset(options: PrepareOptions, inputs: CorpusInputs | None = None) -> PrepareResult:
    """Run the pipeline on the connected Ray cluster and write shards + manifest."""
    import ray
    from ray.data import DataContext

    inputs = inputs or plan_inputs(options)
    tokenizer = get_tokenizer(options.tokenizer)
    storage.prepare_output(options.out_dir, options.overwrite)

    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # shards follow input order: deterministic
    actors = options.tokenizer_actors or cluster_cpus()
    if not inputs.tables:  # no more actors than blocks to give them
        actors = min(actors, -(-len(inputs.files) // FILES_PER_BLOCK))
    documents = _read_documents(inputs, options.text_column).map_batches(
        DocumentTokenizer,
        fn_constructor_args=(
            options.tokenizer,
            options.val_fraction,
            options.min_chars,
            options.max_chars,
        ),
        batch_format="pyarrow",
        batch_size=DOCS_PER_BATCH,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=TOKENIZER_CPUS,
    )

    # Shards are written locally (to a staging folder when out_dir is a URI, uploaded at
    # the end) by this driver alone: input order, so the same corpus gives the same bytes.
    with storage.writing_dir(options.out_dir, last=MANIFEST) as out:
        start = time.perf_counter()
        dtype = token_dtype(tokenizer.vocab_size)
        writers = {split: ShardWriter(out, split, dtype, options.shard_tokens) for split in SPLITS}
        skipped: Counter[str] = Counter(inputs.skipped)  # left out while listing
        seen: set[str] = set()
        files_read = bytes_read = 0
        for batch in documents.iter_batches(batch_format="pyarrow", batch_size=None):
            column = batch.column("tokens").combine_chunks()
            offsets = column.offsets.to_numpy()
            values = column.values.to_numpy()
            statuses = batch.column("status").to_pylist()
            hashes = batch.column("hash").to_pylist()
            splits = batch.column("split").to_pylist()
            files_read += len(statuses)
            bytes_read += int(pa.compute.sum(batch.column("n_bytes")).as_py() or 0)
            for i, status in enumerate(statuses):
                if status != KEPT:
                    skipped[status] += 1
                elif hashes[i] in seen:
                    skipped[DUPLICATE] += 1
                else:
                    seen.add(hashes[i])
                    writers[splits[i]].add(values[offsets[i] : offsets[i + 1]], doc_hash=hashes[i])
        for writer in writers.values():
            writer.flush()
        seconds = time.perf_counter() - start

        kept = sum(w.stats.documents for w in writers.values())
        if kept == 0:
            storage.delete(options.out_dir)
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            raise RaygptError(f"no usable documents in {options.inputs}: all skipped ({reasons})")
        manifest = Manifest(
            tokenizer=tokenizer.name,
            vocab_size=tokenizer.vocab_size,
            eot_token=tokenizer.eot_token,
            token_dtype=dtype.name,
            splits={split: writer.stats for split, writer in writers.items()},
            skipped=dict(sorted(skipped.items())),
            inputs=list(options.inputs),
            files_read=files_read,
            extra={
                "include": options.include,
                "exclude": options.exclude,
                "include_hidden": options.include_hidden,
                "follow_symlinks": options.follow_symlinks,
                "val_fraction": options.val_fraction,
                "min_chars": options.min_chars,
                "max_chars": options.max_chars,
                "bytes_read": bytes_read,
            },
        )
        write_tokenizer(out, tokenizer)
        write_manifest(out, manifest)
    return PrepareResult(
        manifest=manifest, out_dir=options.out_dir, seconds=seconds, bytes_read=bytes_read
    )


def _read_documents(inputs: CorpusInputs, text_column: str):
    """One Ray Dataset of raw documents as (bytes, path) rows, files first, in input order."""
    import ray

    parts = []
    if inputs.files:
        # Paths only: the tokenizer actors read the files themselves, in large batches.
        blocks = max(1, min(-(-len(inputs.files) // FILES_PER_BLOCK), 4 * cluster_cpus()))
        paths = [{"path": path} for path in inputs.files]
        parts.append(ray.data.from_items(paths, override_num_blocks=blocks))
    jsonl = [t for t in inputs.tables if t.endswith(".jsonl")]
    parquet = [t for t in inputs.tables if t.endswith(".parquet")]
    if jsonl:
        rows = ray.data.read_json(jsonl, lines=True, include_paths=True, num_cpus=READ_CPUS)
        parts.append(_rows_as_documents(rows, text_column))
    if parquet:
        rows = ray.data.read_parquet(
            parquet, columns=[text_column], include_paths=True, num_cpus=READ_CPUS
        )
        parts.append(_rows_as_documents(rows, text_column))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""  # vanished or unreadable since listing: counted as empty, never fatal


def _rows_as_documents(rows, text_column: str):
    """Table rows -> the same (bytes, path) rows as files, so one tokenizer pool serves both."""

    def to_bytes(batch: pa.Table) -> pa.Table:
        texts = batch.column(text_column).to_pylist()
        raw = [t.encode("utf-8") if isinstance(t, str) else b"" for t in texts]
        return pa.table({"bytes": pa.array(raw, type=pa.binary()), "path": batch.column("path")})

    return rows.map_batches(to_bytes, batch_format="pyarrow", num_cpus=READ_CPUS)


def _check_tables(tables: list[str], text_column: str) -> None:
    """Name a missing text column before any Ray work starts."""
    for table in tables:
        if table.endswith(".parquet"):
            try:
                names = pq.read_schema(table).names
            except (pa.ArrowInvalid, OSError) as err:
                raise RaygptError(f"{table} is not a readable Parquet file: {err}") from None
        else:
            with open(table, encoding="utf-8", errors="replace") as f:
                first = f.readline()
            try:
                names = list(json.loads(first)) if first.strip() else []
            except (json.JSONDecodeError, TypeError):
                raise RaygptError(f"{table}: the first line is not a JSON object") from None
        if text_column not in names:
            raise RaygptError(
                f"{table} has no column '{text_column}' (it has {names[:8]}); pass --text-column"
            )
