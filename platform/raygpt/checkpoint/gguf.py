"""GGUF files (llama.cpp's format) in: a llama-architecture model with its vocabulary.

Every tensor is dequantized to float32 through the `gguf` package (F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q4_K, Q6_K and the other types it reads). llama.cpp's converter reorders each head's
rows of the query and key weights for its interleaved RoPE; raygpt rotates HF's way (pairs
(i, i + head_dim/2)), so the order is undone here. The vocabulary, merges, special tokens and
chat template become a tokenizer.json and raygpt metadata, the same tokenizer transformers
builds from the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raygpt.checkpoint.native import CheckpointMeta, model_from_state_dict
from raygpt.config import ModelConfig, section_from_dict
from raygpt.errors import CheckpointError, RaygptError
from raygpt.model import GPT

ARCHITECTURES = ("llama",)
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types
# Pre-tokenizer splits by `tokenizer.ggml.pre`; any other keeps GPT-2's (ByteLevel's own).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {"llama3": LLAMA3_SPLIT, "llama-v3": LLAMA3_SPLIT, "llama-bpe": LLAMA3_SPLIT}


def load_gguf(path: Path, device: torch.device | str = "cpu") -> tuple[GPT, CheckpointMeta]:
    reader = _reader(path)
    fields = _fields(reader)
    config = gguf_model_config(fields, [t.name for t in reader.tensors], path)
    state = {}
    for tensor in reader.tensors:
        if not _wanted(tensor.name):
            continue
        weights = _dequantize(tensor, path)
        if tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.n_head if "attn_q" in tensor.name else config.kv_heads
            weights = _unpermute(weights, heads)
        state[tensor.name] = torch.from_numpy(np.array(weights))  # a copy: the file is mapped
    model = model_from_state_dict(config, _join(state, config.n_layer), str(path)).to(device)
    tokenizer_json, special = gguf_tokenizer(fields, path)
    meta = CheckpointMeta(
        model=config,
        tokenizer="bpe",
        source="gguf",
        special_tokens=special,
        chat_template=fields.get("tokenizer.chat_template"),
        tokenizer_json=tokenizer_json,
        extra={"gguf": {"name": fields.get("general.name"), "file": Path(path).name}},
    )
    return model, meta


def gguf_model_config(fields: dict, tensor_names: list[str], path: Path) -> ModelConfig:
    arch = fields.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: GGUF architecture {arch!r} is not one raygpt runs (it reads {list(ARCHITECTURES)})"
        )

    def key(name: str, default=None):
        return fields.get(f"{arch}.{name}", default)

    if (
        key("rope.scaling.type") not in (None, "none", "linear")
        or key("rope.scaling.factor", 1.0) != 1.0
    ):
        raise CheckpointError(f"{path}: RoPE scaling is not supported by raygpt")
    n_embd, n_head = key("embedding_length"), key("attention.head_count")
    head_dim = n_embd // n_head if n_embd and n_head else None
    if key("rope.dimension_count", head_dim) != head_dim:
        raise CheckpointError(f"{path}: partial rotary embeddings are not supported by raygpt")
    values = {
        "n_layer": key("block_count"),
        "n_head": n_head,
        "n_kv_head": key("attention.head_count_kv", n_head),
        "n_embd": n_embd,
        "block_size": key("context_length"),
        "vocab_size": key("vocab_size") or len(fields.get("tokenizer.ggml.tokens", [])),
        "bias": False,
        "position": "rope",
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "norm": "rmsnorm",
        "norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "mlp": "swiglu",
        "mlp_hidden": key("feed_forward_length"),
        "tie_embeddings": "output.weight" not in tensor_names,
    }
    try:
        return section_from_dict(ModelConfig, values, "model", str(path))
    except RaygptError as err:
        raise CheckpointError(str(err)) from None


def gguf_tokenizer(fields: dict, path: Path) -> tuple[str, dict[str, int]]:
    """The vocabulary as a tokenizer.json (byte-level BPE), and the special token ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if fields.get("tokenizer.ggml.model") != "gpt2":
        raise CheckpointError(
            f"{path}: tokenizer {fields.get('tokenizer.ggml.model')!r} is not supported "
            "(raygpt reads byte-level BPE vocabularies, 'gpt2' in GGUF)"
        )
    tokens = fields["tokenizer.ggml.tokens"]
    kinds = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    split = SPLITS.get(fields.get("tokenizer.ggml.pre"))
    if split:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t, k in zip(tokens, kinds, strict=True)
            if k == CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, normalized=False)
            for t, k in zip(tokens, kinds, strict=True)
            if k == USER_DEFINED
        ]
    )
    special = {
        name: int(fields[f"tokenizer.ggml.{key}"])
        for name, key in (
            ("bos", "bos_token_id"),
            ("eos", "eos_token_id"),
            ("pad", "padding_token_id"),
        )
        if f"tokenizer.ggml.{key}" in fields
    }
    if "<|endoftext|>" in tokens:
        special["eot"] = tokens.index("<|endoftext|>")
    return tokenizer.to_str(), special


def _reader(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as err:  # the reader's own errors for a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable GGUF file: {err}") from None


def _fields(reader) -> dict:
    fields = {}
    for name, field in reader.fields.items():
        try:
            fields[name] = field.contents()
        except Exception:  # a field type this reader cannot decode: raygpt needs none of them
            continue
    return fields


def _dequantize(tensor, path: Path) -> np.ndarray:
    from gguf.quants import dequantize

    try:
        return dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    except NotImplementedError:
        raise CheckpointError(
            f"{path}: {tensor.name} is {tensor.tensor_type.name}, a type the gguf package cannot "
            "dequantize"
        ) from None


def _unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores each head's rows as (pair, 2) interleaved; HF (and raygpt) as
    (2, pair): first halves, then second halves."""
    rows, columns = weights.shape
    return (
        weights.reshape(heads, rows // heads // 2, 2, columns).swapaxes(1, 2).reshape(rows, columns)
    )


GGUF_NAMES = {
    "token_embd.weight": "transformer.wte.weight",
    "output_norm.weight": "transformer.ln_f.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_NAMES = {
    "attn_norm.weight": "ln_1.weight",
    "ffn_norm.weight": "ln_2.weight",
    "attn_output.weight": "attn.c_proj.weight",
    "ffn_down.weight": "mlp.c_proj.weight",
}
JOINED = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_gate.weight", "ffn_up.weight")


def _wanted(name: str) -> bool:
    """Whether a GGUF tensor is one raygpt uses (rope_freqs and the like are not)."""
    if name in GGUF_NAMES:
        return True
    return name.startswith("blk.") and name.split(".", 2)[2] in (*BLOCK_NAMES, *JOINED)


def _join(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """GGUF names to raygpt's, q/k/v into c_attn and gate/up into c_fc."""
    out = {GGUF_NAMES[name]: t for name, t in state.items() if name in GGUF_NAMES}
    for i in range(n_layer):
        block = {
            name.split(".", 2)[2]: t for name, t in state.items() if name.startswith(f"blk.{i}.")
        }
        prefix = f"transformer.h.{i}."
        for name, ours in BLOCK_NAMES.items():
            if name in block:
                out[prefix + ours] = block[name]
        try:
            out[prefix + "attn.c_attn.weight"] = torch.cat(
                [block["attn_q.weight"], block["attn_k.weight"], block["attn_v.weight"]]
            )
            out[prefix + "mlp.c_fc.weight"] = torch.cat(
                [block["ffn_gate.weight"], block["ffn_up.weight"]]
            )
        except KeyError as err:
            raise CheckpointError(f"block {i} has no {err.args[0]}") from None
    return out
