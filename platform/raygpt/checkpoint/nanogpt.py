"""Import nanoGPT's `ckpt.pt` (what its train.py writes), read with `weights_only=True`."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from raygpt.checkpoint.native import CheckpointMeta, model_from_state_dict
from raygpt.config import ModelConfig, section_from_dict
from raygpt.errors import CheckpointError, RaygptError
from raygpt.model import GPT
from raygpt.tokenizer import GPT2_VOCAB_SIZE

COMPILED_PREFIX = "_orig_mod."  # what torch.compile adds to every name when the model is saved
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def load_nanogpt_checkpoint(
    path: Path, device: torch.device | str = "cpu"
) -> tuple[GPT, CheckpointMeta]:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"{path} is corrupt or holds objects other than plain tensors and values "
            f"(it is loaded with weights_only=True and never unpickled freely): {err}"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is not a nanoGPT checkpoint (no 'model' and 'model_args')")
    args = {k: v for k, v in ckpt["model_args"].items() if k in MODEL_ARGS}
    # nanoGPT pads GPT-2's vocabulary to 50304 itself; the tokenizer's 50257 is the real size.
    if args.get("vocab_size") == 50304:
        args["vocab_size"] = GPT2_VOCAB_SIZE
    try:
        config = section_from_dict(ModelConfig, args, "model_args", str(path))
    except RaygptError as err:
        raise CheckpointError(str(err)) from None
    state = {}
    for name, tensor in ckpt["model"].items():
        name = name.removeprefix(COMPILED_PREFIX)
        if name.endswith(".attn.bias"):
            continue  # the causal-mask buffer of nanoGPT's non-flash attention path
        state[name] = tensor
    model = model_from_state_dict(config, state, str(path))
    meta = CheckpointMeta(
        model=config,
        tokenizer="gpt2" if config.vocab_size >= GPT2_VOCAB_SIZE else None,
        step=int(ckpt.get("iter_num", 0)),
        source="nanogpt",
        extra={"nanogpt_config": ckpt.get("config"), "best_val_loss": _float(ckpt)},
    )
    return model, meta


def _float(ckpt: dict) -> float | None:
    value = ckpt.get("best_val_loss")
    return float(value) if value is not None else None
