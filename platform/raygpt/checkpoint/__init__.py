"""Checkpoints on disk: raygpt's own format and the ones it imports and exports.

    native.py   raygpt's folder (safetensors + raygpt.json) and the one weight loader
    hf_gpt2.py  Hugging Face GPT-2 folders, in and out
    nanogpt.py  nanoGPT's ckpt.pt, in
    load.py     tells the format apart and loads any of them

Converters depend on native.py and the model, never on each other or on this package's face.
"""

from raygpt.checkpoint.load import checkpoint_format, load_model, read_model_config
from raygpt.checkpoint.native import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointMeta,
    read_meta,
    save_checkpoint,
)

__all__ = [
    "META_FILE",
    "WEIGHTS_FILE",
    "CheckpointMeta",
    "checkpoint_format",
    "load_model",
    "read_meta",
    "read_model_config",
    "save_checkpoint",
]
