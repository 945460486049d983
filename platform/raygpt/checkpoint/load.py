"""Which format a checkpoint is in, and loading it whatever it is.

Every reader takes a path or a URI (s3://...): the format is told from what is there, the
metadata read in place, and the weights fetched once into raygpt.storage's local cache.
Converters (native, hf_gpt2, nanogpt) know nothing of each other; only this module knows
them all.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pyarrow.fs import FileType

from raygpt import storage
from raygpt.checkpoint.hf_gpt2 import hf_model_config, load_hf_gpt2
from raygpt.checkpoint.nanogpt import load_nanogpt_checkpoint
from raygpt.checkpoint.native import META_FILE, CheckpointMeta, load_checkpoint, read_meta
from raygpt.config import ModelConfig
from raygpt.errors import CheckpointError
from raygpt.model import GPT


def checkpoint_format(path: str | Path) -> str:
    """'raygpt', 'hf-gpt2' or 'nanogpt', from what is on disk; a clear error otherwise."""
    kind = storage.file_type(path)
    if kind == FileType.NotFound:
        raise CheckpointError(f"checkpoint not found: {path}")
    if kind == FileType.File:
        if str(path).endswith((".pt", ".pth")):
            return "nanogpt"
        raise CheckpointError(f"{path}: expected a checkpoint folder or a nanoGPT .pt file")
    if storage.is_file(storage.join(path, META_FILE)):
        return "raygpt"
    if storage.is_file(storage.join(path, "config.json")):
        return "hf-gpt2"
    if storage.is_file(storage.join(path, "ckpt.pt")):
        return "nanogpt"
    raise CheckpointError(
        f"{path} is not a checkpoint: no {META_FILE} (raygpt), config.json (Hugging Face GPT-2) "
        "or ckpt.pt (nanoGPT) in it"
    )


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, CheckpointMeta]:
    """Load a model from any format raygpt reads, chosen by what is on disk.

    - a raygpt checkpoint folder (raygpt.json + model.safetensors), float or INT8
    - a Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin)
    - a nanoGPT `ckpt.pt`, or a folder holding one
    """
    kind = checkpoint_format(path)
    path = storage.local_copy(path)
    if kind == "raygpt":
        return load_checkpoint(path, device)
    if kind == "hf-gpt2":
        return load_hf_gpt2(path, device)
    return load_nanogpt_checkpoint(path if path.is_file() else path / "ckpt.pt", device)


def read_model_config(path: str | Path) -> ModelConfig:
    """A checkpoint's architecture, reading only metadata where the format has it apart."""
    kind = checkpoint_format(path)
    if kind == "raygpt":
        return read_meta(path).model
    if kind == "hf-gpt2":
        return hf_model_config(path)  # config.json only, read in place
    return load_model(path)[0].config  # nanoGPT keeps its model_args inside the weights file
