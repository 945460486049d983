"""Hugging Face GPT-2 folders in and out, so transformers, vLLM and ray.serve.llm read our models.

HF's GPT-2 stores attention and MLP weights as Conv1D, i.e. (in, out): the transpose of
nn.Linear. Otherwise the names match nanoGPT's, under a `transformer.` prefix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from raygpt import storage
from raygpt.checkpoint.hf_files import CONFIG_FILE, read_hf_config, read_hf_weights
from raygpt.checkpoint.native import CheckpointMeta, model_from_state_dict
from raygpt.config import ModelConfig, section_from_dict
from raygpt.errors import CheckpointError, RaygptError
from raygpt.model import GPT
from raygpt.tokenizer import GPT2_EOT, GPT2_VOCAB_SIZE

CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# HF's activation names -> ours. gelu_new and gelu_pytorch_tanh are the same tanh approximation.
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, and GPT-2's


def load_hf_gpt2(directory: Path, device: torch.device | str = "cpu") -> tuple[GPT, CheckpointMeta]:
    """Load a local HF GPT-2 folder (config.json + model.safetensors or pytorch_model.bin)."""
    config = hf_model_config(directory)
    state = {}
    for name, tensor in read_hf_weights(directory, device).items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue  # old causal-mask buffers; the head is tied to wte
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[f"transformer.{name}"] = tensor.contiguous()
    model = model_from_state_dict(config, state, str(directory))
    tokenizer = "gpt2" if config.vocab_size == GPT2_VOCAB_SIZE else None
    return model, CheckpointMeta(model=config, tokenizer=tokenizer, source="hf-gpt2")


def export_hf_gpt2(model: GPT, meta: CheckpointMeta, directory: str | Path) -> Path:
    """Write `model` as an HF GPT-2 folder (GPT2LMHeadModel: config.json + model.safetensors)."""
    if getattr(model, "quantization", None):
        raise CheckpointError(
            "an INT8 checkpoint cannot be exported to HF GPT-2: export the original"
        )
    config = model.config
    gpt2_layout = dict(position="learned", norm="layernorm", mlp="gelu", tie_embeddings=True)
    changed = [k for k, v in gpt2_layout.items() if getattr(config, k) != v]
    if changed or config.kv_heads != config.n_head or config.qkv_bias is not None:
        raise CheckpointError(
            f"this model is not GPT-2's layout ({', '.join(changed) or 'n_kv_head, qkv_bias'} "
            "differ): the modern block exports as a Llama folder"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # GPT2LMHeadModel ties it to wte
        tensor = tensor.detach().cpu()
        if name == "transformer.wte.weight":
            tensor = tensor[: config.vocab_size]  # drop the padding rows
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[name] = tensor.contiguous()
    if not config.bias:  # HF's GPT-2 always has biases: zeros are the same function
        for name, tensor in model.state_dict().items():
            if name.endswith(".weight") and ("ln_" in name or name.endswith(CONV1D_WEIGHTS)):
                out_features = tensor.shape[0]
                state[name.removesuffix("weight") + "bias"] = tensor.new_zeros(out_features)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(_hf_config(config, meta, model), indent=2))
    return directory


def _hf_config(config: ModelConfig, meta: CheckpointMeta, model: GPT) -> dict[str, Any]:
    activation = "gelu_new" if config.activation == "gelu_tanh" else "gelu"
    eot = GPT2_EOT if meta.tokenizer == "gpt2" else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": activation,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": str(model.lm_head.weight.dtype).removeprefix("torch."),
        "raygpt_tokenizer": meta.tokenizer,
    }


def hf_model_config(directory: str | Path) -> ModelConfig:
    """The architecture from config.json (a local folder or a URI: read in place)."""
    path = storage.join(directory, CONFIG_FILE)
    hf = read_hf_config(directory)
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(f"{path}: model_type is {hf.get('model_type')!r}, expected 'gpt2'")
    unsupported = {
        "scale_attn_weights": (False, "unscaled attention"),
        "scale_attn_by_inverse_layer_idx": (True, "attention scaled by layer index"),
        "add_cross_attention": (True, "cross-attention"),
        "tie_word_embeddings": (False, "an untied output head"),
    }
    for key, (value, what) in unsupported.items():
        if hf.get(key) is value:
            raise CheckpointError(f"{path}: {what} ({key}={value}) is not supported by raygpt")
    if hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 0)):
        raise CheckpointError(f"{path}: n_inner={hf['n_inner']} is not 4 * n_embd")
    if abs(hf.get("layer_norm_epsilon", LAYER_NORM_EPS) - LAYER_NORM_EPS) > 1e-12:
        raise CheckpointError(f"{path}: layer_norm_epsilon must be {LAYER_NORM_EPS}")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{path}: activation_function {activation!r} is not supported")
    values = {
        "n_layer": hf.get("n_layer"),
        "n_head": hf.get("n_head"),
        "n_embd": hf.get("n_embd"),
        "block_size": hf.get("n_positions"),
        "vocab_size": hf.get("vocab_size"),
        "bias": True,
        "dropout": 0.0,
        "activation": ACTIVATIONS[activation],
    }
    try:
        return section_from_dict(ModelConfig, values, "model", str(path))
    except RaygptError as err:
        raise CheckpointError(str(err)) from None
