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
from collections import Counter
from dataclasses import dataclass, field
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
# Skipped while listing, unless asked for: dotfiles and dot-folders (.env, .git-credentials,
# .ssh: where secrets live), and symlinks that lead out of the folder being read.
HIDDEN, OUTSIDE = "hidden", "symlink_outside_input"
KEPT = "ok"


@dataclass
class CorpusInputs:
    """Resolved inputs: plain text/code files, and tables (JSONL, Parquet) with a text column;
    and how many files listing left out, by reason (HIDDEN, OUTSIDE)."""

    files: list[str]
    tables: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.files or self.tables)


def stdlib_root() -> Path:
    """The running Python's standard library: a real code corpus present on every machine."""
    return Path(sysconfig.get_paths()["stdlib"])


def resolve_inputs(
    inputs: list[str],
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    include_hidden: bool = False,
    follow_symlinks: bool = False,
) -> CorpusInputs:
    """Expand inputs (files, folders, globs, 'stdlib') into a sorted, de-duplicated file list.

    include/exclude are shell patterns matched against the file name and its path (`*.py`,
    `*/test/*`). Folders are walked recursively. Dotfiles and dot-folders are left out unless
    `include_hidden`, and symlinks whose target lies outside the folder given unless
    `follow_symlinks`: a corpus must not take a secret in by accident. A file named outright
    is read as given.
    """
    include = include or ["*"]
    exclude = exclude or []
    files: set[str] = set()
    tables: set[str] = set()
    skipped: Counter[str] = Counter()
    walk_options = dict(include_hidden=include_hidden, follow_symlinks=follow_symlinks)
    for item in inputs:
        if item == STDLIB:
            root = stdlib_root()
            found = _walk(root, ["*.py"], [*exclude, "*/site-packages/*"], skipped, **walk_options)
            if not found:
                raise RaygptError(f"the standard library at {root} has no .py files")
            files.update(_matching(found, include, exclude))
            continue
        if any(ch in item for ch in "*?["):
            hidden = {"include_hidden": True} if include_hidden else {}  # Python >= 3.11
            matched = sorted(glob.glob(item, recursive=True, **hidden))
            if not matched:
                raise RaygptError(f"input pattern matched nothing: {item}")
            base = _glob_base(item)
            paths = []
            for m in matched:
                path = Path(m)
                if not path.is_file():
                    continue
                if not follow_symlinks and not _inside(path, base):
                    skipped[OUTSIDE] += 1
                    continue
                paths.append(path)
        else:
            path = Path(item)
            if not path.exists():
                raise RaygptError(f"input not found: {item}")
            if path.is_dir():
                found = _walk(path, include, exclude, skipped, **walk_options)
                if not found:
                    raise RaygptError(
                        f"no files in {item} match include={include} exclude={exclude}"
                        + _skipped_note(skipped)
                    )
                files.update(found)
                continue
            paths = [path]
        for p in paths:
            if p.suffix in TABLE_SUFFIXES:
                tables.add(str(p.resolve()))
            elif _matches(p, include, exclude):
                files.add(str(p.resolve()))
    resolved = CorpusInputs(files=sorted(files), tables=sorted(tables), skipped=dict(skipped))
    if not resolved:
        raise RaygptError(
            f"no input files found in {inputs} (include={include}, exclude={exclude})"
            + _skipped_note(skipped)
        )
    return resolved


def _walk(
    root: Path,
    include: list[str],
    exclude: list[str],
    skipped: Counter[str],
    include_hidden: bool,
    follow_symlinks: bool,
) -> list[str]:
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root).parts
        if not path.is_file() or not _matches(path, include, exclude):
            continue
        if not include_hidden and any(part.startswith(".") for part in relative):
            skipped[HIDDEN] += 1
        elif not follow_symlinks and not _inside(path, root):
            skipped[OUTSIDE] += 1
        else:
            found.append(str(path.resolve()))
    return found


def _matching(paths: list[str], include: list[str], exclude: list[str]) -> list[str]:
    return [p for p in paths if _matches(Path(p), include, exclude)]


def _matches(path: Path, include: list[str], exclude: list[str]) -> bool:
    def hit(pattern: str) -> bool:
        return fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(str(path), pattern)

    return any(hit(p) for p in include) and not any(hit(p) for p in exclude)


def _glob_base(pattern: str) -> Path:
    """The folder a glob reads: its path up to the first part with a wildcard."""
    fixed = []
    for part in Path(pattern).parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks followed, lies within `root`."""
    return path.resolve().is_relative_to(root.resolve())


def _skipped_note(skipped: Counter[str]) -> str:
    if not skipped:
        return ""
    listed = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    return f"; left out: {listed} (--include-hidden, --follow-symlinks take them in)"


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
