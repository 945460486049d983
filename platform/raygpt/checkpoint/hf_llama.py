"""Hugging Face Llama-family folders in and out: LlamaForCausalLM, MistralForCausalLM and
Qwen2ForCausalLM share one block (RoPE, RMSNorm, SwiGLU, grouped-query attention), which is
raygpt's modern block; MixtralForCausalLM and Qwen2MoeForCausalLM are that block with a
mixture of experts for its MLP (their names and keys: hf_moe.py). HF keeps q, k, v and
gate, up as separate matrices; raygpt joins each group into one (c_attn, c_fc), so the
converters split and join them.

Out: a raygpt checkpoint of this family becomes a Llama folder (Qwen2 when it has biases on
q, k, v only; Mixtral or Qwen2-MoE with experts) that transformers and vLLM load, with its
tokenizer and chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from raygpt.checkpoint.hf_files import read_hf_config, read_hf_tokenizer, read_hf_weights
from raygpt.checkpoint.hf_moe import (
    MOE_ARCHITECTURES,
    MOE_FAMILY,
    Names,
    export_kind,
    moe_config_values,
    moe_hf_config,
    sparse_mlp_names,
)
from raygpt.checkpoint.native import CheckpointMeta, model_from_state_dict
from raygpt.config import ModelConfig, section_from_dict
from raygpt.errors import CheckpointError, RaygptError
from raygpt.model import GPT

FAMILY = ("llama", "mistral", "qwen2", *MOE_FAMILY)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", **MOE_ARCHITECTURES}
# HF's per-block names -> raygpt's, attention and norms; the joined ones are listed in JOINED.
# The MLP's: DENSE_MLP, or a mixture's (hf_moe.sparse_mlp_names).
BLOCK = {
    "input_layernorm": "ln_1",
    "post_attention_layernorm": "ln_2",
    "self_attn.o_proj": "attn.c_proj",
}
JOINED = {"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}
DENSE_MLP: Names = ({"mlp.down_proj": "mlp.c_proj"}, {"mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj")})


def block_names(kind: str, config: ModelConfig, layer: int) -> Names:
    """Block `layer`'s weights: HF's name -> raygpt's, and raygpt's joined -> HF's parts."""
    renamed, joined = sparse_mlp_names(kind, config) if config.is_sparse(layer) else DENSE_MLP
    return BLOCK | renamed, JOINED | joined


def load_hf_llama(
    directory: Path, device: torch.device | str = "cpu"
) -> tuple[GPT, CheckpointMeta]:
    """Load a local HF folder of the Llama family (config.json + safetensors or .bin)."""
    config = hf_llama_config(directory)
    kind = read_hf_config(directory)["model_type"]
    hf = read_hf_weights(directory, device)
    state = {
        "transformer.wte.weight": hf.pop("model.embed_tokens.weight", None),
        "transformer.ln_f.weight": hf.pop("model.norm.weight", None),
    }
    if config.tie_embeddings:
        hf.pop("lm_head.weight", None)
    elif "lm_head.weight" in hf:
        state["lm_head.weight"] = hf.pop("lm_head.weight")
    for i in range(config.n_layer):
        theirs, ours = f"model.layers.{i}.", f"transformer.h.{i}."
        renamed, joined = block_names(kind, config, i)
        for name, mine in renamed.items():
            for what in ("weight", "bias"):
                if f"{theirs}{name}.{what}" in hf:
                    state[f"{ours}{mine}.{what}"] = hf.pop(f"{theirs}{name}.{what}")
        for mine, parts in joined.items():
            for what in ("weight", "bias"):
                found = [hf.pop(f"{theirs}{part}.{what}", None) for part in parts]
                if all(t is not None for t in found):
                    state[f"{ours}{mine}.{what}"] = torch.cat(found)
    state = {name: t for name, t in state.items() if t is not None}
    unused = sorted(name for name in hf if not name.endswith("rotary_emb.inv_freq"))
    if unused:
        raise CheckpointError(f"{directory}: weights raygpt has no place for: {unused[:4]}")
    model = model_from_state_dict(config, state, str(directory))
    tokenizer_json, tokenizer_config = read_hf_tokenizer(directory)
    meta = CheckpointMeta(
        model=config,
        tokenizer="bpe" if tokenizer_json else None,
        source=f"hf-{kind}",
        special_tokens=_special_tokens(directory, tokenizer_json),
        chat_template=tokenizer_config.get("chat_template"),
        tokenizer_json=tokenizer_json,
    )
    return model, meta


def hf_llama_config(directory: str | Path) -> ModelConfig:
    """The architecture from config.json, or one clear error naming what raygpt cannot run."""
    hf = read_hf_config(directory)
    kind = hf.get("model_type")
    where = f"{directory}/config.json"
    if kind not in FAMILY:
        raise CheckpointError(f"{where}: model_type {kind!r} is not of the Llama family {FAMILY}")
    rope = hf.get("rope_parameters") or {}
    if (rope.get("rope_type") or "default") != "default" or hf.get("rope_scaling"):
        raise CheckpointError(f"{where}: RoPE scaling is not supported by raygpt")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act {hf['hidden_act']!r} is not SwiGLU's silu")
    n_embd, n_head = hf.get("hidden_size"), hf.get("num_attention_heads")
    if hf.get("head_dim") not in (None, n_embd // n_head if n_embd and n_head else None):
        raise CheckpointError(f"{where}: head_dim {hf['head_dim']} is not hidden_size / heads")
    block_size = hf.get("max_position_embeddings")
    qwen = kind in ("qwen2", "qwen2_moe")
    window = hf.get("sliding_window") if not qwen or hf.get("use_sliding_window") else None
    if window and block_size and window < block_size:
        block_size = window  # within the window, sliding-window attention is full attention
    if qwen:
        bias, qkv_bias = False, bool(hf.get("qkv_bias", True))  # Qwen2-MoE's may turn them off
    else:
        if bool(hf.get("attention_bias")) != bool(hf.get("mlp_bias")):
            raise CheckpointError(f"{where}: attention_bias without mlp_bias is not supported")
        bias, qkv_bias = bool(hf.get("attention_bias")), None
    values = {
        "n_layer": hf.get("num_hidden_layers"),
        "n_head": n_head,
        "n_kv_head": hf.get("num_key_value_heads") or n_head,
        "n_embd": n_embd,
        "block_size": block_size,
        "vocab_size": hf.get("vocab_size"),
        "bias": bias,
        "qkv_bias": qkv_bias,
        "position": "rope",
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        "norm": "rmsnorm",
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "mlp": "swiglu",
        "mlp_hidden": hf.get("intermediate_size"),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }
    if kind in MOE_FAMILY:
        values.update(moe_config_values(hf, kind))
    try:
        return section_from_dict(ModelConfig, values, "model", where)
    except RaygptError as err:
        raise CheckpointError(str(err)) from None


def is_llama_layout(config: ModelConfig) -> bool:
    return (config.position, config.norm, config.mlp) == ("rope", "rmsnorm", "swiglu")


def export_hf_llama(model: GPT, meta: CheckpointMeta, directory: str | Path) -> Path:
    """Write `model` as an HF Llama (or Qwen2) folder: config.json, model.safetensors, and the
    tokenizer with its chat template when the checkpoint has one."""
    config = model.config
    if getattr(model, "quantization", None):
        raise CheckpointError("an INT8 checkpoint cannot be exported to HF: export the original")
    if not is_llama_layout(config):
        raise CheckpointError(
            "only the modern block (rope, rmsnorm, swiglu) exports as a Llama folder; "
            "GPT-2's layout exports as GPT-2"
        )
    kind = "qwen2" if config.has_qkv_bias and not config.bias else "llama"
    if config.n_expert:
        kind = export_kind(config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ours = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    state = {
        "model.embed_tokens.weight": ours["transformer.wte.weight"][: config.vocab_size],
        "model.norm.weight": ours["transformer.ln_f.weight"],
    }
    if not config.tie_embeddings:
        state["lm_head.weight"] = ours["lm_head.weight"][: config.vocab_size]
    for i in range(config.n_layer):
        prefix, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        renamed, joined_names = block_names(kind, config, i)
        for name, mine in renamed.items():
            for what in ("weight", "bias"):
                if f"{prefix}{mine}.{what}" in ours:
                    state[f"{theirs}{name}.{what}"] = ours[f"{prefix}{mine}.{what}"]
        for mine, parts in joined_names.items():
            for what in ("weight", "bias"):
                joined = ours.get(f"{prefix}{mine}.{what}")
                if joined is None:
                    continue
                sizes = _split_sizes(config, mine, joined)
                for part, piece in zip(parts, joined.split(sizes), strict=True):
                    state[f"{theirs}{part}.{what}"] = piece
    state = {name: t.contiguous() for name, t in state.items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(_hf_config(kind, model, meta), indent=2))
    if meta.tokenizer_json:
        (directory / "tokenizer.json").write_text(meta.tokenizer_json)
        (directory / "tokenizer_config.json").write_text(
            json.dumps(_tokenizer_config(meta), indent=2)
        )
    return directory


def _split_sizes(config: ModelConfig, name: str, joined: torch.Tensor) -> list[int]:
    if name == "attn.c_attn":
        kv = config.kv_heads * config.head_dim
        return [config.n_embd, kv, kv]
    return [joined.shape[0] // 2] * 2  # any MLP's c_fc, dense or expert: gate, then up


def _hf_config(kind: str, model: GPT, meta: CheckpointMeta) -> dict[str, Any]:
    config = model.config
    special = meta.special_tokens
    hf = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # older readers
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": special.get("bos"),
        "eos_token_id": special.get("eos", special.get("eot")),
        "pad_token_id": special.get("pad"),
        "torch_dtype": str(model.lm_head.weight.dtype).removeprefix("torch."),
    }
    if kind == "llama":
        hf.update(attention_bias=config.bias, mlp_bias=config.bias)
    elif kind == "qwen2":
        hf.update(use_sliding_window=False)
    else:
        hf.update(moe_hf_config(kind, config))
    return hf


def _tokenizer_config(meta: CheckpointMeta) -> dict[str, Any]:
    vocab = {i: t for t, i in _added_tokens(meta.tokenizer_json).items()}
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False}
    for name in ("bos", "eos", "pad"):
        if name in meta.special_tokens and meta.special_tokens[name] in vocab:
            config[f"{name}_token"] = vocab[meta.special_tokens[name]]
    if meta.chat_template:
        config["chat_template"] = meta.chat_template
    return config


def _added_tokens(tokenizer_json: str) -> dict[str, int]:
    return {t["content"]: t["id"] for t in json.loads(tokenizer_json).get("added_tokens", [])}


def _special_tokens(directory: Path, tokenizer_json: str | None) -> dict[str, int]:
    """bos/eos/pad ids from config.json (and generation_config.json), as HF keeps them."""
    hf = read_hf_config(directory)
    special = {}
    for name in ("bos", "eos", "pad"):
        value = hf.get(f"{name}_token_id")
        if isinstance(value, list):  # several end tokens: the first one names the end
            value = value[0] if value else None
        if value is not None:
            special[name] = int(value)
    if tokenizer_json and "<|endoftext|>" in (added := _added_tokens(tokenizer_json)):
        special["eot"] = added["<|endoftext|>"]
    return special
