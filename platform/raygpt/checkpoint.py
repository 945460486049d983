"""raygpt's checkpoint format, and one loader for every format we read.

A checkpoint is a folder: `model.safetensors` (weights; the tied output head is stored once)
and `raygpt.json` (model config, tokenizer, step, training config). Nothing here unpickles
arbitrary objects: safetensors holds only tensors, and the foreign formats are read with
`torch.load(weights_only=True)`. Every reader takes a path or a URI (s3://...): metadata is
read in place, weights through raygpt.storage's local cache.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pyarrow.fs import FileType
from safetensors.torch import load_file, save_file

from raygpt import storage
from raygpt.config import ModelConfig, section_from_dict
from raygpt.errors import CheckpointError, RaygptError
from raygpt.model import GPT

FORMAT = "raygpt-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "raygpt.json"
TIED_HEAD = "lm_head.weight"


@dataclass
class CheckpointMeta:
    model: ModelConfig
    tokenizer: str | None = "gpt2"  # None: unknown (e.g. a char-level nanoGPT model)
    step: int = 0
    train: dict[str, Any] | None = None  # the experiment config that produced it
    source: str = "raygpt"  # where the weights came from: raygpt, hf-gpt2, nanogpt
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **dataclasses.asdict(self),
        }


def save_checkpoint(
    directory: str | Path, model: GPT | dict[str, torch.Tensor], meta: CheckpointMeta
) -> Path:
    """Write weights (a model, or its full state dict) and metadata into the local `directory`
    (for a URI, write into raygpt.storage.writing_dir(uri, last=META_FILE))."""
    if storage.is_uri(directory):
        raise CheckpointError(f"{directory}: save_checkpoint writes a local folder, not a URI")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    state = {
        name: tensor.detach().contiguous().cpu()
        for name, tensor in weights.items()
        if name != TIED_HEAD
    }
    # Weights first, metadata last: a folder with raygpt.json has complete weights.
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    (directory / META_FILE).write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    return directory


def load_checkpoint(
    directory: str | Path, device: torch.device | str = "cpu"
) -> tuple[GPT, CheckpointMeta]:
    """Load a raygpt checkpoint folder."""
    directory = Path(directory)
    meta = read_meta(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    state = read_safetensors(weights, device)
    quantization = meta.extra.get("quantization")
    if quantization:
        from raygpt.quantize import load_int8_state

        return load_int8_state(meta.model, state, quantization["method"], str(weights)), meta
    return model_from_state_dict(meta.model, state, str(weights)), meta


def read_meta(directory: str | Path) -> CheckpointMeta:
    path = storage.join(directory, META_FILE)
    try:
        raw = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: {META_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a raygpt checkpoint (format != {FORMAT!r})")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {raw['format_version']}; "
            f"this raygpt reads up to {FORMAT_VERSION}: upgrade raygpt"
        )
    try:
        model = section_from_dict(ModelConfig, raw.get("model"), "model", str(path))
        return CheckpointMeta(
            model=model,
            tokenizer=raw.get("tokenizer"),
            step=int(raw.get("step", 0)),
            train=raw.get("train"),
            source=raw.get("source", "raygpt"),
            extra=raw.get("extra") or {},
        )
    except (RaygptError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid metadata: {err}") from None


def read_safetensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types for truncated/garbage files
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {err}") from None


def model_from_state_dict(config: ModelConfig, state: dict[str, torch.Tensor], source: str) -> GPT:
    """Build a GPT around `state` (nanoGPT names) without a throwaway random init.

    The token embedding may have fewer rows than the padded vocabulary (HF, nanoGPT char
    models): it is padded with zeros. The output head is tied to it.
    """
    state = dict(state)
    state.pop(TIED_HEAD, None)
    wte_name = "transformer.wte.weight"
    wte = state.get(wte_name)
    if wte is not None and wte.shape[0] < config.padded_vocab_size:
        pad = wte.new_zeros(config.padded_vocab_size - wte.shape[0], wte.shape[1])
        state[wte_name] = torch.cat([wte, pad])
    with torch.device("meta"):
        model = GPT(config)
    expected = {name for name in model.state_dict() if name != TIED_HEAD}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the model config "
            f"(missing: {_few(missing)}; unexpected: {_few(unexpected)})"
        )
    state[TIED_HEAD] = state[wte_name]
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{source}: weights do not match the model config: {err}") from None
    model.lm_head.weight = model.transformer.wte.weight  # assign=True made two Parameters: re-tie
    return model.eval()


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

    - a raygpt checkpoint folder (raygpt.json + model.safetensors)
    - a Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin)
    - a nanoGPT `ckpt.pt`, or a folder holding one
    """
    kind = checkpoint_format(path)
    path = storage.local_copy(path)
    if kind == "raygpt":
        return load_checkpoint(path, device)
    if kind == "hf-gpt2":
        from raygpt.hf_gpt2 import load_hf_gpt2

        return load_hf_gpt2(path, device)
    from raygpt.nanogpt_checkpoint import load_nanogpt_checkpoint

    return load_nanogpt_checkpoint(path if path.is_file() else path / "ckpt.pt", device)


def load_for_inference(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[GPT, CheckpointMeta]:
    """load_model, laid out for decoding: on CPU, matmul weights column-major (faster GEMV;
    INT8 models have their own kernels and are left as they are)."""
    model, meta = load_model(path, device)
    if torch.device(device).type == "cpu":
        model.use_decode_layout()
    return model.eval(), meta


def load_for_serving(
    path: str | Path,
    device: torch.device | str = "cpu",
    int8: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[GPT, CheckpointMeta]:
    """A model to serve: INT8 (quantized now unless the checkpoint already is), or float
    laid out for decoding in `dtype`. One loader for the Serve generator and the benchmarks."""
    from raygpt.quantize import is_quantized, quantize_model

    if int8:
        model, meta = load_model(path, device)
        return (model if is_quantized(model) else quantize_model(model)).eval(), meta
    model, meta = load_for_inference(path, device)
    if not is_quantized(model):
        model = model.to(dtype)
    return model, meta


def read_model_config(path: str | Path) -> ModelConfig:
    """A checkpoint's architecture, reading only metadata where the format has it apart."""
    kind = checkpoint_format(path)
    if kind == "raygpt":
        return read_meta(path).model
    if kind == "hf-gpt2":
        from raygpt.hf_gpt2 import hf_model_config

        return hf_model_config(path)  # config.json only, read in place
    return load_model(path)[0].config  # nanoGPT keeps its model_args inside the weights file


def _few(names: list[str], limit: int = 4) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
