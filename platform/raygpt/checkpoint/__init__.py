"""Checkpoints on disk: raygpt's own format and the ones it imports and exports.

    native.py    raygpt's folder (safetensors + raygpt.json) and the one weight loader
    hf_files.py  reading a Hugging Face folder: config, weights, tokenizer files
    hf_gpt2.py   Hugging Face GPT-2 folders, in and out
    hf_llama.py  Hugging Face Llama, Mistral and Qwen2 folders (Mixtral, Qwen2-MoE), in and out
    hf_moe.py    what Mixtral's and Qwen2-MoE's blocks add: expert config keys and names
    gguf.py      llama.cpp's GGUF files, in
    nanogpt.py   nanoGPT's ckpt.pt, in
    load.py      tells the format apart, loads any of them, exports to HF
    pretrained.py  real pretrained models from the package index, provisioned offline

Converters depend on native.py (and hf_files.py, hf_moe.py) and the model, never on each
other or on this package's face.
"""

from raygpt.checkpoint.load import checkpoint_format, export_hf, load_model, read_model_config
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
    "export_hf",
    "load_model",
    "read_meta",
    "read_model_config",
    "save_checkpoint",
]
