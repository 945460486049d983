"""A checkpoint made ready to generate with: laid out for decoding (packed for oneDNN on
CPU), or quantized for serving, and the tokenizer it was trained with."""

from __future__ import annotations

from pathlib import Path

import torch

from raygpt.checkpoint import CheckpointMeta, load_model
from raygpt.errors import TokenizerError
from raygpt.inference.draft_model import layers_of
from raygpt.model import GPT
from raygpt.model.int8 import is_quantized, quantize_model
from raygpt.tokenizer import BPETokenizer, Tokenizer, get_tokenizer


def load_for_inference(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[GPT, CheckpointMeta]:
    """load_model (in `dtype` if given), laid out for decoding on CPU: GPT.use_decode_layout
    (INT8 models have their own kernels and are left as they are)."""
    model, meta = load_model(path, device)
    if dtype is not None and not is_quantized(model):
        model = model.to(dtype)
    if torch.device(device).type == "cpu":
        model.use_decode_layout()  # last: .to() moves no packed weight
    return model.eval(), meta


def load_for_serving(
    path: str | Path,
    device: torch.device | str = "cpu",
    int8: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[GPT, CheckpointMeta]:
    """A model to serve: INT8 (quantized now unless the checkpoint already is), or float
    laid out for decoding in `dtype`. One loader for the Serve generator and the benchmarks."""
    if int8:
        model, meta = load_model(path, device)
        return (model if is_quantized(model) else quantize_model(model)).eval(), meta
    return load_for_inference(path, device, dtype)


def load_tokenizer(
    kind: str | None, tokenizer_json: str | None = None, special_tokens: dict | None = None
) -> Tokenizer:
    """A checkpoint's tokenizer from its metadata (CheckpointMeta's tokenizer, tokenizer_json
    and special_tokens): a built-in one by name, or its own vocabulary."""
    if kind == "bpe":
        if not tokenizer_json:
            raise TokenizerError("the checkpoint's tokenizer.json is missing")
        return BPETokenizer(tokenizer_json, special_tokens)
    if kind is None:
        raise TokenizerError("the checkpoint names no tokenizer: pass one")
    return get_tokenizer(kind)


def checkpoint_tokenizer(meta: CheckpointMeta) -> Tokenizer:
    return load_tokenizer(meta.tokenizer, meta.tokenizer_json, meta.special_tokens)


def load_draft(
    draft: str,
    model: GPT,
    meta: CheckpointMeta,
    device: torch.device | str = "cpu",
    int8: bool = True,
    dtype: torch.dtype = torch.float32,
) -> GPT:
    """The draft model for speculative decoding (SpeculationConfig.draft) beside `model`:
    `self:N` is the model's own first N layers and head; anything else a checkpoint loaded
    as the model was (INT8 or `dtype`), which must use the model's tokenizer."""
    if draft.startswith("self:"):
        layers = draft.removeprefix("self:")
        if not layers.isdigit():
            raise ValueError(f"draft {draft!r}: self:N takes a number of layers, e.g. self:8")
        return layers_of(model, int(layers))
    draft_model, draft_meta = load_for_serving(draft, device, int8=int8, dtype=dtype)
    if (draft_meta.tokenizer, draft_meta.tokenizer_json) != (meta.tokenizer, meta.tokenizer_json):
        raise ValueError(f"draft {draft}: its tokenizer is not the model's")
    return draft_model
