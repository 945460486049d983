"""The modern block against transformers: tiny random Llama, Qwen2 and Mistral models (GQA,
MQA, untied heads, biases where the family has them) and their mixtures of experts (Mixtral;
Qwen2-MoE with a shared expert, a dense layer and unnormalized top-k weights) imported, run,
exported and run again."""

from __future__ import annotations

import pytest
import torch

from raygpt.checkpoint import export_hf, load_model, save_checkpoint
from raygpt.config import ModelConfig
from raygpt.errors import CheckpointError
from raygpt.inference.engine import GenerationEngine, GenerationRequest, generate_alone
from raygpt.model import GPT
from raygpt.model.int8 import quantize_model
from raygpt.model.kv_cache import KVCache
from raygpt.tokenizer import get_tokenizer

TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=300,  # padded to 320 inside raygpt: the padding must never show
    max_position_embeddings=128,
    rope_theta=500.0,
)
FAMILIES = {
    "llama-gqa-untied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2)),
    "llama-mqa-tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(num_key_value_heads=1, tie_word_embeddings=True),
    ),
    "llama-biases": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True),
    ),
    "qwen2-qkv-bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2)),
    "mistral-gqa": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2)),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    ),
    "qwen2-moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_only_layers=[1],
        ),
    ),
}


def hf_model(family: str, seed: int = 0):
    import transformers

    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**TINY, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # random biases and norms, so a dropped one would show
        for name, param in model.named_parameters():
            if name.endswith(("bias", "norm.weight", "layernorm.weight")):
                param.add_(torch.randn_like(param) * 0.1)
            if name.endswith(".gate.weight"):  # a router: spread tokens, no near-ties
                param.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """An HF folder of the family, its transformers model, and raygpt's import of it."""
    folder = tmp_path_factory.mktemp(request.param)
    hf = hf_model(request.param)
    shard = {"max_shard_size": "50KB"} if "mistral" in request.param else {}
    hf.save_pretrained(folder, **shard)
    ours, meta = load_model(folder)
    return request.param, folder, hf, ours, meta


def ids(length: int = 24, batch: int = 2) -> torch.Tensor:
    return torch.randint(
        0, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1)
    )


def test_logits_equal_transformers(family):
    name, folder, hf, ours, _ = family
    if "mistral" in name:
        assert any(p.name.endswith(".index.json") for p in folder.iterdir())  # sharded
    with torch.no_grad():
        theirs = hf(ids()).logits
        mine = ours(ids())[0][..., : TINY["vocab_size"]]
    assert (mine - theirs).abs().max() < 1e-4


def test_export_round_trips_through_transformers(family, tmp_path):
    from transformers import AutoModelForCausalLM

    name, _, hf, ours, meta = family
    export_hf(ours, meta, tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(again).__name__ == (
        FAMILIES[name][1] if "mistral" not in name else "LlamaForCausalLM"
    )
    with torch.no_grad():
        assert (again(ids()).logits - hf(ids()).logits).abs().max() < 1e-4
    reloaded, _ = load_model(tmp_path / "out")
    assert reloaded.config == ours.config


def test_greedy_generation_equals_transformers_with_and_without_the_cache(family):
    _, _, hf, ours, _ = family
    prompt = ids(8, 1)
    theirs = hf.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 24, temperature=0), theirs)
    assert torch.equal(ours.generate(prompt, 24, temperature=0, use_cache=False), theirs)


def test_the_cache_holds_only_the_key_value_heads(family):
    _, _, _, ours, _ = family
    cache = KVCache(ours.config, 3)
    assert cache.keys[0].shape == (3, ours.config.kv_heads, 128, 16)


def test_the_engine_batches_modern_models_exactly(family):
    _, _, _, ours, _ = family
    byte = get_tokenizer("gpt2")  # any tokenizer that decodes ids < 300: ids are compared
    requests = [
        GenerationRequest(tuple(p), n, temperature=0, stop_at_eot=False)
        for p, n in [([5, 6, 7], 20), ([9] * 11, 9), ([200, 3], 30)]
    ]
    engine = GenerationEngine(ours, byte, max_slots=4)
    results: dict[int, list] = {i: [] for i in range(3)}
    for i, request in enumerate(requests):
        engine.submit(request, results[i].append)
    while not all(r and r[-1].finish_reason for r in results.values()):
        engine.step()
    for i, request in enumerate(requests):
        alone = generate_alone(ours, byte, request)[2]
        assert [t for u in results[i] for t in u.token_ids] == alone


def test_int8_keeps_the_modern_model_close_and_reloads(family, tmp_path):
    _, _, _, ours, meta = family
    model = GPT(ours.config)
    model.load_state_dict(ours.state_dict())
    int8 = quantize_model(model)
    with torch.no_grad():
        base, quantized = ours(ids())[0], int8(ids())[0]
    assert (base - quantized).abs().max() < 0.05 * base.abs().max()
    meta.extra["quantization"] = {"method": int8.quantization}
    save_checkpoint(tmp_path / "int8", int8, meta)
    reloaded, _ = load_model(tmp_path / "int8")
    with torch.no_grad():
        assert torch.equal(reloaded(ids())[0], quantized)
    meta.extra.pop("quantization")


def test_rope_tables_are_rebuilt_in_float32_after_a_dtype_change():
    config = ModelConfig(
        n_layer=1,
        n_head=2,
        n_embd=32,
        block_size=4096,
        vocab_size=64,
        position="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
    )
    model = GPT(config).to(torch.bfloat16)
    assert model.rope_cos.dtype == torch.float32
    far = model.rope_cos[4000]
    assert torch.equal(far, GPT(config).rope_cos[4000])


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
            "RoPE scaling",
        ),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(attention_bias=True), "attention_bias without mlp_bias"),
    ],
)
def test_unsupported_hf_configs_fail_naming_what(tmp_path, change, message):
    from transformers import LlamaConfig

    LlamaConfig(**TINY, **change).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_a_gguf_of_another_architecture_is_refused_in_one_line(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"GGUF architecture 'mamba' is not one raygpt runs"):
        load_model(tmp_path / "m.gguf")


def modern_tiny() -> ModelConfig:
    return ModelConfig(
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=64,
        block_size=32,
        vocab_size=96,
        bias=False,
        position="rope",
        norm="rmsnorm",
        mlp="swiglu",
        mlp_hidden=96,
        tie_embeddings=False,
    )


def one_step_gradients(model: GPT, tokens: torch.Tensor) -> tuple[float, dict]:
    model.zero_grad()
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_the_modern_block_trains_the_same_checkpointed_and_compiled():
    from raygpt.train.step import set_activation_checkpointing

    torch.manual_seed(0)
    model = GPT(modern_tiny()).train()
    tokens = torch.randint(0, 96, (4, 33), generator=torch.Generator().manual_seed(0))
    loss, grads = one_step_gradients(model, tokens)
    set_activation_checkpointing(model, True)
    again, recomputed = one_step_gradients(model, tokens)
    set_activation_checkpointing(model, False)
    assert again == loss and all(torch.equal(grads[n], recomputed[n]) for n in grads)
    compiled = torch.compile(model)
    compiled.zero_grad()
    _, compiled_loss = compiled(tokens[:, :-1], tokens[:, 1:])
    compiled_loss.backward()
    assert abs(float(compiled_loss) - loss) < 1e-5
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, grads[name], atol=1e-5), name
