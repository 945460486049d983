"""Which format a checkpoint is in, loading it whatever it is, and writing it as Hugging Face's.

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
from raygpt.checkpoint.gguf import load_gguf
from raygpt.checkpoint.hf_files import CONFIG_FILE, read_hf_config
from raygpt.checkpoint.hf_gpt2 import export_hf_gpt2, hf_model_config, load_hf_gpt2
from raygpt.checkpoint.hf_llama import (
    FAMILY,
    export_hf_llama,
    hf_llama_config,
    is_llama_layout,
    load_hf_llama,
)
from raygpt.checkpoint.nanogpt import load_nanogpt_checkpoint
from raygpt.checkpoint.native import META_FILE, CheckpointMeta, load_checkpoint, read_meta
from raygpt.config import ModelConfig
from raygpt.errors import CheckpointError
from raygpt.model import GPT


def checkpoint_format(path: str | Path) -> str:
    """'raygpt', 'hf-gpt2', 'hf-llama', 'gguf' or 'nanogpt', from what is on disk; a clear
    error otherwise."""
    kind = storage.file_type(path)
    if kind == FileType.NotFound:
        raise CheckpointError(f"checkpoint not found: {path}")
    if kind == FileType.File:
        if str(path).endswith((".pt", ".pth")):
            return "nanogpt"
        if str(path).endswith(".gguf"):
            return "gguf"
        raise CheckpointError(
            f"{path}: expected a checkpoint folder, a .gguf or a nanoGPT .pt file"
        )
    if storage.is_file(storage.join(path, META_FILE)):
        return "raygpt"
    if storage.is_file(storage.join(path, CONFIG_FILE)):
        model_type = read_hf_config(path).get("model_type")
        if model_type == "gpt2":
            return "hf-gpt2"
        if model_type in FAMILY:
            return "hf-llama"
        raise CheckpointError(
            f"{path}: a Hugging Face {model_type!r} model; raygpt reads gpt2 and {list(FAMILY)}"
        )
    if storage.is_file(storage.join(path, "ckpt.pt")):
        return "nanogpt"
    if _gguf_in(path):
        return "gguf"
    raise CheckpointError(
        f"{path} is not a checkpoint: no {META_FILE} (raygpt), config.json (Hugging Face), "
        "ckpt.pt (nanoGPT) or one .gguf file in it"
    )


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, CheckpointMeta]:
    """Load a model from any format raygpt reads, chosen by what is on disk.

    - a raygpt checkpoint folder (raygpt.json + model.safetensors), float or INT8
    - a Hugging Face folder (config.json + safetensors or pytorch_model.bin): GPT-2, or the
      Llama family (Llama, Mistral, Qwen2, and Mixtral and Qwen2-MoE with experts)
    - a GGUF file of the llama architecture, or a folder holding one
    - a nanoGPT `ckpt.pt`, or a folder holding one
    """
    kind = checkpoint_format(path)
    path = storage.local_copy(path)
    if kind == "raygpt":
        return load_checkpoint(path, device)
    if kind == "hf-gpt2":
        return load_hf_gpt2(path, device)
    if kind == "hf-llama":
        return load_hf_llama(path, device)
    if kind == "gguf":
        return load_gguf(path if path.is_file() else _gguf_in(path), device)
    return load_nanogpt_checkpoint(path if path.is_file() else path / "ckpt.pt", device)


def read_model_config(path: str | Path) -> ModelConfig:
    """A checkpoint's architecture, reading only metadata where the format has it apart."""
    kind = checkpoint_format(path)
    if kind == "raygpt":
        return read_meta(path).model
    if kind == "hf-gpt2":
        return hf_model_config(path)  # config.json only, read in place
    if kind == "hf-llama":
        return hf_llama_config(path)
    return load_model(path)[0].config  # nanoGPT and GGUF keep theirs inside the weights file


def export_hf(model: GPT, meta: CheckpointMeta, directory: str | Path) -> Path:
    """An HF folder transformers and vLLM load: Llama (or Qwen2) for the modern block,
    Mixtral or Qwen2-MoE for its mixtures of experts, GPT-2 for GPT-2's layout."""
    if is_llama_layout(model.config):
        return export_hf_llama(model, meta, directory)
    if model.config.n_expert:
        raise CheckpointError(
            "experts export as Mixtral or Qwen2-MoE, which need the modern block "
            "(position: rope, norm: rmsnorm, mlp: swiglu); GPT-2 has no mixture of experts"
        )
    return export_hf_gpt2(model, meta, directory)


def _gguf_in(folder: str | Path) -> Path | None:
    """The one .gguf file in a local folder (a pip-installed model package holds one)."""
    if storage.is_uri(folder):
        return None
    found = sorted(Path(folder).glob("*.gguf"))
    return found[0] if len(found) == 1 else None
