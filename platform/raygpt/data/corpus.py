"""What a corpus is made of: finding input files, and turning raw bytes into documents.

No Ray here: the Ray Data job in raygpt.data.prepare calls these per batch. Everything is
deterministic per document (the split comes from the content hash, not from file order), so
the same input gives the same shards on a laptop or a cluster.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from raygpt.errors import RaygptError

STDLIB = "stdlib"
TABLE_SUFFIXES = (".jsonl", ".parquet")
# Skip reasons, as counted in the manifest.
BINARY, UNDECODABLE, EMPTY, TOO_SMALL, TOO_LARGE, DUPLICATE = (
    "binary",
    "undecodable",
    "empty",
    "too_small",
    "too_large",
    "duplicate",
)
KEPT = "ok"


@dataclass
class CorpusInputs:
    """Resolved inputs: plain text/code files, and tables (JSONL, Parquet) with a text column."""

    files: list[str]
    tables: list[str]

    def __bool__(self) -> bool:
        return bool(self.files or self.tables)


def stdlib_root() -> Path:
    """The running Python's standard library: a real code corpus present on every machine."""
    return Path(sysconfig.get_paths()["stdlib"])


def resolve_inputs(
    inputs: list[str], include: list[str] | None = None, exclude: list[str] | None = None
) -> CorpusInputs:
    """Expand inputs (files, folders, globs, 'stdlib') into a sorted, de-duplicated file list.

    include/exclude are shell patterns matched against the file name and its path (`*.py`,
    `*/test/*`). Folders are walked recursively; hidden folders (.git, .venv) are skipped.
    """
    include = include or ["*"]
    exclude = exclude or []
    files: set[str] = set()
    tables: set[str] = set()
    for item in inputs:
        if item == STDLIB:
            root = stdlib_root()
            found = _walk(root, ["*.py"], [*exclude, "*/site-packages/*"])
            if not found:
                raise RaygptError(f"the standard library at {root} has no .py files")
            files.update(_matching(found, include, exclude))
            continue
        if any(ch in item for ch in "*?["):
            matched = sorted(glob.glob(item, recursive=True))
            if not matched:
                raise RaygptError(f"input pattern matched nothing: {item}")
            paths = [Path(m) for m in matched if Path(m).is_file()]
        else:
            path = Path(item)
            if not path.exists():
                raise RaygptError(f"input not found: {item}")
            if path.is_dir():
                found = _walk(path, include, exclude)
                if not found:
                    raise RaygptError(
                        f"no files in {item} match include={include} exclude={exclude}"
                    )
                files.update(found)
                continue
            paths = [path]
        for p in paths:
            if p.suffix in TABLE_SUFFIXES:
                tables.add(str(p.resolve()))
            elif _matches(p, include, exclude):
                files.add(str(p.resolve()))
    resolved = CorpusInputs(files=sorted(files), tables=sorted(tables))
    if not resolved:
        raise RaygptError(
            f"no input files found in {inputs} (include={include}, exclude={exclude})"
        )
    return resolved


def _walk(root: Path, include: list[str], exclude: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root).parts
        if any(part.startswith(".") for part in relative[:-1]) or not path.is_file():
            continue
        if _matches(path, include, exclude):
            found.append(str(path.resolve()))
    return found


def _matching(paths: list[str], include: list[str], exclude: list[str]) -> list[str]:
    return [p for p in paths if _matches(Path(p), include, exclude)]


def _matches(path: Path, include: list[str], exclude: list[str]) -> bool:
    def hit(pattern: str) -> bool:
        return fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(str(path), pattern)

    return any(hit(p) for p in include) and not any(hit(p) for p in exclude)


def decode_document(data: bytes) -> tuple[str, str]:
    """(text, status): status is KEPT, or why the bytes are not a text document."""
    if b"\x00" in data[:8192]:
        return "", BINARY  # NUL bytes do not occur in text files
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "", UNDECODABLE
    text = text.removeprefix("\ufeff")  # a BOM is encoding, not content
    return (text, KEPT) if text.strip() else ("", EMPTY)


def size_status(text: str, min_chars: int, max_chars: int | None) -> str:
    if len(text) < min_chars:
        return TOO_SMALL
    if max_chars is not None and len(text) > max_chars:
        return TOO_LARGE
    return KEPT


def content_hash(text: str) -> str:
    """Exact de-duplication key: a hash of the document's bytes."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def split_of(doc_hash: str, val_fraction: float) -> str:
    """'val' for a fixed fraction of documents, chosen by their hash: stable across runs."""
    return "val" if int(doc_hash[:8], 16) / 2**32 < val_fraction else "train"
