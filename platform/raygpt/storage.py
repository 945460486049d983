"""Where datasets, runs and checkpoints live: a local (or NFS) path, or a URI on any
filesystem pyarrow knows: s3://, gs://, abfs://, hdfs://, file://.

Ray Data and Ray Train read and write such URIs themselves; this module gives the rest of
raygpt the same reach. Small files (a manifest, metrics.jsonl) are read and written in
place; a folder (shards, a checkpoint) is written in a local staging folder and uploaded
whole; a checkpoint is read through a local cache that is refreshed when the remote files
change. Credentials and endpoints come from the cloud SDK's own settings: for S3,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an instance role, and AWS_ENDPOINT_URL for an
S3-compatible store (MinIO, Ceph).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from raygpt.errors import RaygptError

CACHE_ENV = "RAYGPT_CACHE_DIR"  # raygpt's cache root (the tokenizer's too); default ~/.cache/raygpt
FINGERPRINT = ".raygpt-remote.json"


class StorageError(RaygptError):
    """A location that cannot be reached, read or written."""


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def absolute(location: str | Path) -> str:
    """A location that means the same from any working directory (Tune trials have their own)."""
    return str(location).rstrip("/") if is_uri(location) else str(Path(location).resolve())


def join(location: str | Path, *parts: str) -> str:
    if is_uri(location):
        return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(location, *parts))


def name_of(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def parent_of(location: str | Path) -> str:
    if is_uri(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).parent)


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds `location` and the path on it."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    try:
        return pafs.FileSystem.from_uri(str(location).rstrip("/"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise StorageError(f"cannot open {location}: {_first_line(err)}") from None


def file_type(location: str | Path) -> pafs.FileType:
    fs, path = resolve(location)
    try:
        return fs.get_file_info(path).type
    except OSError as err:
        raise StorageError(f"cannot reach {location}: {_first_line(err)}") from None


def is_file(location: str | Path) -> bool:
    return file_type(location) == pafs.FileType.File


def is_dir(location: str | Path) -> bool:
    return file_type(location) == pafs.FileType.Directory


def exists(location: str | Path) -> bool:
    return file_type(location) != pafs.FileType.NotFound


def read_bytes(location: str | Path) -> bytes:
    fs, path = resolve(location)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"not found: {location}") from None
    except OSError as err:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(location)) from None
        raise StorageError(f"cannot read {location}: {_first_line(err)}") from None


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str | Path, data: bytes) -> None:
    fs, path = resolve(location)
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
    except OSError as err:
        raise StorageError(f"cannot write {location}: {_first_line(err)}") from None


def write_text(location: str | Path, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def append_text(location: str | Path, text: str) -> None:
    """Append to a small log file. Object stores have no append: there the file is rewritten,
    which is fine for logs written every few steps."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        with open(location, "a") as f:
            f.write(text)
        return
    try:
        before = read_bytes(location)
    except FileNotFoundError:
        before = b""
    write_bytes(location, before + text.encode("utf-8"))


def listing(location: str | Path) -> dict[str, tuple[int, int]]:
    """Every file under a folder (or the file itself): relative name -> (size, mtime in ns)."""
    fs, path = resolve(location)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return {name_of(path): (info.size, info.mtime_ns or 0)}
        if info.type == pafs.FileType.NotFound:
            return {}
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as err:
        raise StorageError(f"cannot list {location}: {_first_line(err)}") from None
    prefix = path.rstrip("/") + "/"
    return {
        item.path.removeprefix(prefix): (item.size, item.mtime_ns or 0)
        for item in found
        if item.type == pafs.FileType.File
    }


def delete(location: str | Path) -> None:
    """Remove a file or a folder with everything in it; nothing there is fine."""
    fs, path = resolve(location)
    try:
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            fs.delete_file(path)
    except OSError as err:
        raise StorageError(f"cannot delete {location}: {_first_line(err)}") from None


def prepare_output(location: str | Path, overwrite: bool) -> None:
    """An output folder is written only when it is empty or the user asked to replace it."""
    fs, path = resolve(location)
    try:
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            raise StorageError(f"output {location} exists and is not a folder")
        if kind == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path)):
            if not overwrite:
                raise StorageError(
                    f"output folder {location} is not empty; pass --overwrite to replace it"
                )
            fs.delete_dir(path)
        if not is_uri(location):
            fs.create_dir(path, recursive=True)
    except OSError as err:
        raise StorageError(f"cannot write {location}: {_first_line(err)}") from None


def upload(local: str | Path, location: str | Path) -> None:
    """Copy a local file or folder to `location` (a folder's files land under it)."""
    fs, path = resolve(location)
    try:
        if Path(local).is_file():  # a folder's parents pyarrow makes itself; a file's it does not
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(local), path, destination_filesystem=fs, use_threads=True)
    except OSError as err:
        raise StorageError(f"cannot upload {local} to {location}: {_first_line(err)}") from None


def download(location: str | Path, local: str | Path) -> None:
    fs, path = resolve(location)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    # Object stores may hold no folder markers (`aws s3 cp` writes none): make every folder.
    for name in listing(location) if file_type(location) == pafs.FileType.Directory else []:
        (local / name).parent.mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(path, str(local), source_filesystem=fs, use_threads=True)
    except OSError as err:
        raise StorageError(f"cannot download {location}: {_first_line(err)}") from None


@contextlib.contextmanager
def writing_dir(location: str | Path) -> Iterator[Path]:
    """A local folder whose contents end up at `location`: the folder itself for a local path;
    for a URI a staging folder, uploaded when the block ends without an error."""
    if not is_uri(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="raygpt-upload-") as staging:
        yield Path(staging)
        upload(staging, location)


def local_copy(location: str | Path) -> Path:
    """A local path holding `location`'s contents: the path itself when it is local; for a
    URI a cached download, fetched again only when the remote files changed (names, sizes,
    modification times), so replicas on one node share one copy."""
    if not is_uri(location):
        return Path(location)
    files = listing(location)
    if not files:
        raise StorageError(f"not found: {location}")
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "raygpt") / "remote"
    key = hashlib.sha256(absolute(location).encode()).hexdigest()[:20]
    target = root / key / name_of(location)
    fingerprint = json.dumps(
        {"location": absolute(location), "files": sorted(files.items())}, sort_keys=True
    )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node, however many replicas ask
        record = root / key / FINGERPRINT
        if record.is_file() and record.read_text() == fingerprint and target.exists():
            return target
        shutil.rmtree(root / key, ignore_errors=True)
        download(location, target)
        record.write_text(fingerprint)
    return target


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
