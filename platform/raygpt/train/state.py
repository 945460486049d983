"""Training checkpoints: a loadable raygpt checkpoint plus what resuming needs.

Folder contents: model.safetensors + raygpt.json (sample.py and serving read these as is),
optimizer.pt (full optimizer state; read back with weights_only=True) and train_state.json
(step, data position, best val loss). RNG needs no saving: every step seeds its dropout from
(seed, rank, step), so a resumed step draws what the uninterrupted one would have.

State dicts go through torch.distributed.checkpoint's full-state-dict API, which gathers
the same way for a plain model, DDP and FSDP.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from raygpt.checkpoint.native import TIED_HEAD, CheckpointMeta, read_safetensors, save_checkpoint
from raygpt.config import ModelConfig
from raygpt.errors import CheckpointError

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_into_epoch: int = 0  # global batches of this epoch already trained on
    best_val_loss: float | None = None
    tokens_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # resumes: [{step, world_size}]


def gather_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full (unsharded, CPU) model and optimizer state. Collective: every rank must call it."""
    return get_model_state_dict(model, options=FULL), get_optimizer_state_dict(
        model, optimizer, options=FULL
    )


def checkpoint_meta(
    model: ModelConfig, vocabulary: dict[str, Any], experiment: dict[str, Any], state: TrainState
) -> CheckpointMeta:
    """The metadata of every checkpoint a run writes: its training checkpoints and final/.
    `vocabulary`: tokenizer (and tokenizer_json), special_tokens, chat_template: the dataset's
    tokenizer and what the pretrained model brought (a fine-tuned chat model stays one)."""
    return CheckpointMeta(
        model=model,
        step=state.step,
        train=experiment,
        extra={"best_val_loss": state.best_val_loss},
        **vocabulary,
    )


def write_training_checkpoint(
    directory: Path,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    meta: CheckpointMeta,
    state: TrainState,
) -> Path:
    save_checkpoint(directory, model_state, meta)
    torch.save(optimizer_state, directory / OPTIMIZER_FILE)
    (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
    return directory


def restore_training_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> TrainState:
    """Load weights, optimizer state and position into an already wrapped model (every rank)."""
    try:
        weights = read_safetensors(directory / "model.safetensors")
        weights[TIED_HEAD] = weights["transformer.wte.weight"]
        optimizer_state = torch.load(directory / OPTIMIZER_FILE, weights_only=True)
        raw = json.loads((directory / STATE_FILE).read_text())
        state = TrainState(**raw)
    except (
        OSError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
        pickle.UnpicklingError,
    ) as err:
        raise CheckpointError(f"cannot resume from {directory}: {err}") from None
    set_model_state_dict(model, weights, options=FULL)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=FULL)
    return state
