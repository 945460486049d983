"""raygpt's own checkpoint format, and the one weight loader every format builds its model with.

A checkpoint is a folder: `model.safetensors` (weights; a tied output head is stored once),
`raygpt.json` (model config, tokenizer, special tokens, chat template, step, training config)
and, for a model with its own BPE vocabulary, `tokenizer.json` (Hugging Face's format). Nothing here unpickles
arbitrary objects: safetensors holds only tensors. Metadata is read in place from a path or
a URI (s3://...); weights are read from a local folder (raygpt.checkpoint.load fetches a
URI's into raygpt.storage's cache first).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from raygpt import storage
from raygpt.config import ModelConfig, section_from_dict
from raygpt.errors import CheckpointError, RaygptError
from raygpt.model import GPT
from raygpt.model.int8 import int8_skeleton

FORMAT = "raygpt-checkpoint"
FORMAT_VERSION = 2  # 2: the modern block's switches in `model`, special tokens, chat template
WEIGHTS_FILE = "model.safetensors"
META_FILE = "raygpt.json"
TOKENIZER_FILE = "tokenizer.json"
TIED_HEAD = "lm_head.weight"


@dataclass
class CheckpointMeta:
    model: ModelConfig
    # 'gpt2' or 'byte' (built in), 'bpe' (tokenizer.json beside the weights), None: unknown
    # (e.g. a char-level nanoGPT model)
    tokenizer: str | None = "gpt2"
    step: int = 0
    train: dict[str, Any] | None = None  # the experiment config that produced it
    source: str = "raygpt"  # where the weights came from: raygpt, hf-gpt2, hf-llama, gguf, ...
    extra: dict[str, Any] = field(default_factory=dict)
    special_tokens: dict[str, int] = field(default_factory=dict)  # bos, eos, eot, pad: ids
    chat_template: str | None = None  # Jinja2, as in HF's tokenizer_config.json
    tokenizer_json: str | None = field(default=None, repr=False)  # tokenizer.json's text

    def to_json(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        del fields["tokenizer_json"]  # a file of its own
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **fields}


def save_checkpoint(
    directory: str | Path, model: GPT | dict[str, torch.Tensor], meta: CheckpointMeta
) -> Path:
    """Write weights (a model, or its full state dict) and metadata into the local `directory`
    (for a URI, write into raygpt.storage.writing_dir(uri, last=META_FILE))."""
    if storage.is_uri(directory):
        raise CheckpointError(f"{directory}: save_checkpoint writes a local folder, not a URI")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if meta.tokenizer == "bpe" and not meta.tokenizer_json:
        raise CheckpointError(f"{directory}: a 'bpe' checkpoint needs its tokenizer.json")
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tied = meta.model.tie_embeddings
    state = {
        name: tensor.detach().contiguous().cpu()
        for name, tensor in weights.items()
        if not (tied and name == TIED_HEAD)
    }
    # Weights first, metadata last: a folder with raygpt.json has complete weights.
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    if meta.tokenizer_json:
        (directory / TOKENIZER_FILE).write_text(meta.tokenizer_json)
    (directory / META_FILE).write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    return directory


def load_checkpoint(
    directory: str | Path, device: torch.device | str = "cpu"
) -> tuple[GPT, CheckpointMeta]:
    """Load a local raygpt checkpoint folder (float or INT8)."""
    directory = Path(directory)
    meta = read_meta(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    state = read_safetensors(weights, device)
    quantization = (meta.extra.get("quantization") or {}).get("method")
    return model_from_state_dict(meta.model, state, str(weights), quantization), meta


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
        meta = CheckpointMeta(
            model=model,
            tokenizer=raw.get("tokenizer"),
            step=int(raw.get("step", 0)),
            train=raw.get("train"),
            source=raw.get("source", "raygpt"),
            extra=raw.get("extra") or {},
            special_tokens={k: int(v) for k, v in (raw.get("special_tokens") or {}).items()},
            chat_template=raw.get("chat_template"),
        )
    except (RaygptError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid metadata: {err}") from None
    if meta.tokenizer == "bpe":
        try:
            meta.tokenizer_json = storage.read_text(storage.join(directory, TOKENIZER_FILE))
        except FileNotFoundError:
            raise CheckpointError(f"{directory}: {TOKENIZER_FILE} is missing") from None
    return meta


def read_safetensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types for truncated/garbage files
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {err}") from None


def model_from_state_dict(
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    source: str,
    quantization: str | None = None,
) -> GPT:
    """Build a GPT around `state` (nanoGPT names) without a throwaway random init: the one
    weight loader that every format (raygpt, HF, nanoGPT, INT8) ends in.

    A float model's token embedding (and untied output head) may have fewer rows than the
    padded vocabulary (HF, GGUF, nanoGPT char models): they are padded with zeros. With
    `quantization` (the method an INT8 checkpoint records) the state holds int8 values and
    scales, loaded into the INT8 layers; the embedding reads the int8 head.
    """
    state = dict(state)
    wte_name = "transformer.wte.weight"
    tied = config.tie_embeddings
    if quantization is None:
        if tied:
            state.pop(TIED_HEAD, None)
        for name in (wte_name, TIED_HEAD):
            rows = state.get(name)
            if rows is not None and rows.shape[0] < config.padded_vocab_size:
                pad = rows.new_zeros(config.padded_vocab_size - rows.shape[0], rows.shape[1])
                state[name] = torch.cat([rows, pad])
    with torch.device("meta"):
        model = GPT(config)
        if quantization is not None:
            model = int8_skeleton(model, quantization)
    expected = {name for name in model.state_dict() if not (tied and name == TIED_HEAD)}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    what = "INT8 weights" if quantization else "weights"
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: {what} do not match the model config "
            f"(missing: {_few(missing)}; unexpected: {_few(unexpected)})"
        )
    if quantization is None and tied:
        state[TIED_HEAD] = state[wte_name]
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{source}: {what} do not match the model config: {err}") from None
    if quantization is None and tied:  # assign=True made two Parameters: re-tie
        model.lm_head.weight = model.transformer.wte.weight
    model.reset_rope()  # no weights: built on the meta device, made now
    return model.eval()


def _few(names: list[str], limit: int = 4) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
