"""Reading a Hugging Face model folder: config.json, the weights (one safetensors file, sharded
ones, or the legacy pytorch_model.bin, read with weights_only=True), and the tokenizer files.
Shared by the HF converters (hf_gpt2, hf_llama); it knows no architecture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from raygpt import storage
from raygpt.checkpoint.native import read_safetensors
from raygpt.errors import CheckpointError

CONFIG_FILE = "config.json"


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a local folder or a URI, read in place."""
    path = storage.join(directory, CONFIG_FILE)
    try:
        hf = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return hf


def read_hf_weights(directory: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    legacy = directory / "pytorch_model.bin"
    if single.is_file():
        return read_safetensors(single, device)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} is corrupt: {err}") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_safetensors(directory / shard, device))
        return state
    if legacy.is_file():
        try:
            return torch.load(legacy, map_location=device, weights_only=True)
        except Exception as err:
            raise CheckpointError(
                f"{legacy} could not be read as plain tensors (weights_only=True): {err}"
            ) from None
    raise CheckpointError(
        f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def read_hf_tokenizer(directory: Path) -> tuple[str | None, dict[str, Any]]:
    """tokenizer.json's text (None if the folder has none) and tokenizer_config.json, with
    the chat template from chat_template.jinja when it lives apart."""
    tokenizer = directory / "tokenizer.json"
    text = tokenizer.read_text() if tokenizer.is_file() else None
    config: dict[str, Any] = {}
    path = directory / "tokenizer_config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} is corrupt: {err}") from None
    template = directory / "chat_template.jinja"
    if template.is_file():
        config.setdefault("chat_template", template.read_text())
    return text, config
