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


def cache_root() -> Path:
    """Where provisioned files live (the GPT-2 BPE, pretrained models): $RAYGPT_CACHE_DIR,
    else the source checkout's .cache, else ~/.cache/raygpt."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache"
    return Path.home() / ".cache" / "raygpt"


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
    if not is_uri(location):
        return str(Path(location).parent)
    scheme, rest = str(location).rstrip("/").split("://", 1)
    if "/" not in rest:
        raise StorageError(
            f"{location} is a bucket's root: name a folder in it, e.g. {location}/runs"
        )
    return f"{scheme}://{rest.rsplit('/', 1)[0]}"


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
        if file_type(location) == pafs.FileType.NotFound:  # some stores say so only this way
            raise FileNotFoundError(f"not found: {location}") from None
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


# What this process last wrote to each appended URI: the next append need not read it back.
_appended: dict[str, bytes] = {}


def append_text(location: str | Path, text: str) -> None:
    """Append to a log file. Object stores have no append: there the file is rewritten whole,
    from what this process last wrote (read from the store only on its first append, so a
    resumed run continues the log its previous process left)."""
    if not is_uri(location):
        try:
            Path(location).parent.mkdir(parents=True, exist_ok=True)
            with open(location, "a") as f:
                f.write(text)
        except OSError as err:
            raise StorageError(f"cannot write {location}: {_first_line(err)}") from None
        return
    key = absolute(location)
    if key not in _appended:
        try:
            _appended[key] = read_bytes(location)
        except FileNotFoundError:
            _appended[key] = b""
    content = _appended[key] + text.encode("utf-8")
    write_bytes(location, content)
    _appended[key] = content


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


def upload(local: str | Path, location: str | Path, last: str | None = None) -> None:
    """Copy a local file or folder to `location` (a folder's files land under it). `last`
    names the folder's file that marks it complete (a checkpoint's metadata, a dataset's
    manifest): the old one is deleted first and the new one written after every other file,
    so a reader never pairs a marker with missing or stale files."""
    fs, path = resolve(location)
    local = Path(local)
    try:
        if local.is_file():  # a folder's parents pyarrow makes itself; a file's it does not
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(local), path, destination_filesystem=fs)
            return
        if last is None or not (local / last).is_file():
            pafs.copy_files(str(local), path, destination_filesystem=fs, use_threads=True)
            return
        if fs.get_file_info(f"{path}/{last}").type == pafs.FileType.File:
            fs.delete_file(f"{path}/{last}")
        with tempfile.TemporaryDirectory(prefix="raygpt-marker-") as aside:
            marker = Path(aside) / last
            (local / last).rename(marker)
            try:
                pafs.copy_files(str(local), path, destination_filesystem=fs, use_threads=True)
            finally:
                marker.rename(local / last)
        pafs.copy_files(str(local / last), f"{path}/{last}", destination_filesystem=fs)
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
def writing_dir(location: str | Path, last: str | None = None) -> Iterator[Path]:
    """A local folder whose contents end up at `location`: the folder itself for a local path;
    for a URI a staging folder, uploaded when the block ends without an error (`last`: see
    upload)."""
    if not is_uri(location):
        try:
            Path(location).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot write {location}: {_first_line(err)}") from None
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="raygpt-upload-") as staging:
        yield Path(staging)
        upload(staging, location, last)


def local_copy(location: str | Path) -> Path:
    """A local path holding `location`'s contents: the path itself when it is local; for a
    URI a cached download, fetched again only when the remote files changed (names, sizes,
    modification times), so replicas on one node share one copy."""
    fs, path = resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):  # a plain path or file://
        return Path(path) if is_uri(location) else Path(location)
    files = listing(location)
    if not files:
        raise StorageError(f"not found: {location}")
    fingerprint = json.dumps(
        {"location": absolute(location), "files": sorted(files.items())}, sort_keys=True
    )
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "raygpt") / "remote"
    folder = root / hashlib.sha256(absolute(location).encode()).hexdigest()[:20]
    # One folder per version: a process still reading the previous one is not cut short by
    # this download; older versions go once the new one is complete.
    version = folder / hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    target = version / name_of(location)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node, however many replicas ask
            if (version / FINGERPRINT).is_file():
                return target
            shutil.rmtree(version, ignore_errors=True)
            download(location, target)
            (version / FINGERPRINT).write_text(fingerprint)
            for old in folder.iterdir():
                if old.is_dir() and old != version:
                    shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise StorageError(
            f"cannot cache {location} in {root} (set {CACHE_ENV} to a writable folder): "
            f"{_first_line(err)}"
        ) from None
    return target


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
