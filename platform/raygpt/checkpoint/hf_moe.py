"""Hugging Face's mixture-of-experts Llama blocks: Mixtral and Qwen2-MoE. Their attention,
norms and embeddings are the Llama family's (hf_llama.py reads and writes them); what this
module knows is what differs: the config keys and the names of the sparse MLP's weights.

    Mixtral     block_sparse_moe.gate (the router), block_sparse_moe.experts.E.w1/w3/w2
                (gate, up, down); every layer sparse; top-k weights renormalized
    Qwen2-MoE   mlp.gate, mlp.experts.E.gate_proj/up_proj/down_proj, plus a shared expert
                (mlp.shared_expert.*) scaled by sigmoid(mlp.shared_expert_gate); top-k
                weights renormalized only with norm_topk_prob; dense layers by
                mlp_only_layers and decoder_sparse_step

Both are written per expert, as the models on the Hub are (and as transformers 5 saves
them, though it multiplies them as one batched tensor).

OLMoE is not here: besides its router it normalizes queries and keys (q_norm, k_norm),
which raygpt's attention does not.
"""

from __future__ import annotations

from typing import Any

from raygpt.config import ModelConfig
from raygpt.errors import CheckpointError

MOE_FAMILY = ("mixtral", "qwen2_moe")
MOE_ARCHITECTURES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}

Names = tuple[dict[str, str], dict[str, tuple[str, ...]]]  # (HF -> ours, ours -> HF parts)


def moe_config_values(hf: dict[str, Any], kind: str) -> dict[str, Any]:
    """ModelConfig's expert settings from an HF config.json of the family."""
    if kind == "mixtral":
        return {
            "n_expert": hf.get("num_local_experts"),
            "n_expert_per_token": hf.get("num_experts_per_tok"),
        }
    n_layer = hf.get("num_hidden_layers") or 0
    step = hf.get("decoder_sparse_step") or 1
    dense = set(hf.get("mlp_only_layers") or [])
    sparse = [i for i in range(n_layer) if i not in dense and (i + 1) % step == 0]
    return {
        "n_expert": hf.get("num_experts"),
        "n_expert_per_token": hf.get("num_experts_per_tok"),
        "expert_hidden": hf.get("moe_intermediate_size"),
        "shared_expert_hidden": hf.get("shared_expert_intermediate_size") or 0,
        "moe_layers": None if len(sparse) == n_layer else sparse,
        "router_renormalize": bool(hf.get("norm_topk_prob", False)),
    }


def sparse_mlp_names(kind: str, config: ModelConfig) -> Names:
    """One sparse block's MLP weights, relative to the block: HF's name -> raygpt's for the
    ones kept whole, raygpt's joined c_fc -> HF's (gate, up) for the ones split."""
    if kind == "mixtral":
        moe, gate, up, down = "block_sparse_moe", "w1", "w3", "w2"
    else:
        moe, gate, up, down = "mlp", "gate_proj", "up_proj", "down_proj"
    renamed = {f"{moe}.gate": "mlp.router"}
    joined = {}
    for e in range(config.n_expert):
        theirs, ours = f"{moe}.experts.{e}.", f"mlp.experts.{e}."
        renamed[theirs + down] = ours + "c_proj"
        joined[ours + "c_fc"] = (theirs + gate, theirs + up)
    if config.shared_expert_hidden:
        renamed["mlp.shared_expert.down_proj"] = "mlp.shared_expert.c_proj"
        renamed["mlp.shared_expert_gate"] = "mlp.shared_expert_gate"
        joined["mlp.shared_expert.c_fc"] = (
            "mlp.shared_expert.gate_proj",
            "mlp.shared_expert.up_proj",
        )
    return renamed, joined


def export_kind(config: ModelConfig) -> str:
    """The HF family a raygpt mixture exports as, or one error saying why neither fits."""
    if config.bias:
        raise CheckpointError(
            "an expert model with biases exports as neither Mixtral nor Qwen2-MoE"
        )
    if config.shared_expert_hidden:
        return "qwen2_moe"
    every_layer = config.moe_layers is None or len(config.moe_layers) == config.n_layer
    if config.router_renormalize and every_layer and not config.has_qkv_bias:
        return "mixtral"
    raise CheckpointError(
        "this expert model exports as neither Mixtral (every layer sparse, renormalized "
        "router, no q/k/v biases) nor Qwen2-MoE (a shared expert)"
    )


def moe_hf_config(kind: str, config: ModelConfig) -> dict[str, Any]:
    """The expert keys of config.json for `kind`."""
    if kind == "mixtral":
        return {
            "intermediate_size": config.expert_width,  # Mixtral's MLPs are all experts
            "num_local_experts": config.n_expert,
            "num_experts_per_tok": config.n_expert_per_token,
            "sliding_window": None,
        }
    sparse = set(range(config.n_layer) if config.moe_layers is None else config.moe_layers)
    return {
        "num_experts": config.n_expert,
        "num_experts_per_tok": config.n_expert_per_token,
        "moe_intermediate_size": config.expert_width,
        "shared_expert_intermediate_size": config.shared_expert_hidden,
        "norm_topk_prob": config.router_renormalize,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [i for i in range(config.n_layer) if i not in sparse],
        "qkv_bias": config.has_qkv_bias,
        "use_sliding_window": False,
    }
