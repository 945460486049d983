"""Provision GPT-2's BPE ranks with no internet: `python -m raygpt.tokenizer_setup`.

The ranks (identical to tiktoken's r50k_base) ship as whisper/assets/gpt2.tiktoken in the
openai-whisper sdist on the package index. We fetch that sdist with pip, take the one file,
check its sha256 and write it where tiktoken's cache would keep it, so both raygpt and
`TIKTOKEN_CACHE_DIR=<dir> tiktoken.get_encoding("r50k_base")` find it.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from raygpt.cli import run_cli
from raygpt.errors import TokenizerError
from raygpt.tokenizer import R50K_CACHE_NAME, R50K_SHA256, default_cache_dir

WHISPER_SDIST = "openai-whisper==20250625"
MEMBER_SUFFIX = "whisper/assets/gpt2.tiktoken"


def provision(cache_dir: Path | None = None, sdist: Path | None = None) -> Path:
    """Ensure the verified ranks are in `cache_dir`; return the file. Idempotent."""
    target = (cache_dir or default_cache_dir()) / R50K_CACHE_NAME
    if target.is_file() and _sha256(target.read_bytes()) == R50K_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        data = _ranks_from_sdist(sdist or _download_sdist(Path(tmp)))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)  # atomic: a reader never sees half a file
    return target


def _download_sdist(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["-q", "-d", str(into), WHISPER_SDIST]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob("*.tar.gz"))
    if result.returncode != 0 or not found:
        raise TokenizerError(
            f"could not download the {WHISPER_SDIST} sdist from the package index "
            f"(pip said: {result.stderr.strip()[-300:] or 'nothing'}); pass --sdist FILE "
            "with a copy of it, or provide internet access for tiktoken's own download"
        )
    return found[0]


def _ranks_from_sdist(sdist: Path) -> bytes:
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(MEMBER_SUFFIX)), None)
            if member is None:
                raise TokenizerError(f"{sdist} has no {MEMBER_SUFFIX}")
            data = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as err:
        raise TokenizerError(f"{sdist} is not a readable sdist: {err}") from None
    digest = _sha256(data)
    if digest != R50K_SHA256:
        raise TokenizerError(
            f"{MEMBER_SUFFIX} in {sdist} has sha256 {digest}, expected {R50K_SHA256}"
        )
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, help="default: the checkout's .cache/tiktoken")
    parser.add_argument("--sdist", type=Path, help="a local openai-whisper sdist to read from")
    args = parser.parse_args()
    path = provision(args.cache_dir, args.sdist)
    print(f"GPT-2 BPE ranks ready (sha256 verified): {path}")


if __name__ == "__main__":
    run_cli(main)
