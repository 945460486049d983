"""The mixture-of-experts MLP on its own (no Ray): dispatch against a per-token loop, the
gradients, the router losses, and the config's errors. Parity with transformers' Mixtral and
Qwen2-MoE is in test_llama.py, the Ray Train run in test_train.py."""

from __future__ import annotations

import pytest
import torch

from raygpt.config import ModelConfig, TrainConfig, experiment_from_dict
from raygpt.errors import ConfigError
from raygpt.model import GPT
from raygpt.model.gpt import MLP
from raygpt.model.moe import (
    MoE,
    balance_loss,
    dispatch,
    every_expert,
    moe_layers,
    top_k_routing,
)
from raygpt.train.expert_load import ExpertLoad
from raygpt.train.step import choose_precision, configure_optimizer, train_step


def sparse_config(**changes) -> ModelConfig:
    values = dict(
        n_layer=2,
        n_head=4,
        n_embd=32,
        block_size=32,
        vocab_size=64,
        bias=False,
        position="rope",
        norm="rmsnorm",
        mlp="swiglu",
        n_expert=8,
        n_expert_per_token=2,
        expert_hidden=24,
    )
    return ModelConfig(**{**values, **changes})


def spread_router(layer: MoE, seed: int = 0) -> None:
    """Router logits of order 1, so tokens spread over the experts as in a trained model."""
    with torch.no_grad():
        layer.router.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("renormalize", [True, False], ids=["mixtral", "qwen2-moe"])
def test_dispatch_equals_a_naive_per_token_loop(renormalize):
    torch.manual_seed(0)
    config = sparse_config(shared_expert_hidden=16, router_renormalize=renormalize)
    layer = MoE(config, MLP).eval()
    spread_router(layer)
    x = torch.randn(3, 7, config.n_embd)
    with torch.no_grad():
        y = layer(x)
        expected = torch.zeros_like(x)
        for b in range(3):
            for t in range(7):
                token = x[b, t]
                probs = torch.softmax(layer.router(token), dim=-1)
                chosen = probs.argsort(descending=True)[: config.n_expert_per_token]
                weights = probs[chosen] / (probs[chosen].sum() if renormalize else 1)
                for e, w in zip(chosen.tolist(), weights, strict=True):
                    expected[b, t] += w * layer.experts[e](token)
                gate = torch.sigmoid(layer.shared_expert_gate(token))
                expected[b, t] += gate * layer.shared_expert(token)
    assert (y - expected).abs().max() < 1e-6
    # what a CUDA graph captures instead: every expert on every token, weighted 0 if unchosen
    with torch.no_grad():
        flat = x.reshape(-1, config.n_embd)
        _, weights, experts = top_k_routing(layer.router(flat), 2, renormalize)
        routed = dispatch(flat, weights, experts, layer.experts)[0]
        assert (every_expert(flat, weights, experts, layer.experts) - routed).abs().max() < 1e-6


def test_gradients_reach_every_selected_expert_and_the_router():
    """Three tokens, top-2 of 8: at most six experts are chosen; each chosen one gets a
    gradient, the router too (through the gate weights, and through the balance loss
    alone); the others get a zero one, not none (DDP all-reduces every parameter)."""
    torch.manual_seed(0)
    layer = MoE(sparse_config(), MLP).train()
    spread_router(layer)
    x = torch.randn(1, 3, 32)
    layer(x).square().sum().backward()
    chosen = set(top_k_routing(layer.router(x[0]), 2, True)[2].flatten().tolist())
    assert 2 <= len(chosen) <= 6
    for e, expert in enumerate(layer.experts):
        for name, param in expert.named_parameters():
            assert param.grad is not None, (e, name)
            assert (param.grad.abs().sum() > 0) == (e in chosen), (e, name)
    assert layer.router.weight.grad.abs().sum() > 0
    layer.zero_grad()
    layer(x)
    layer.last.balance_loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0


def test_the_balance_loss_is_one_when_even_and_n_expert_when_collapsed():
    n_expert = 4
    even = torch.full((8, n_expert), 1 / n_expert)
    assert balance_loss(even, torch.full((n_expert,), 4)) == pytest.approx(1.0)
    collapsed = torch.zeros(8, n_expert)
    collapsed[:, 0] = 1
    assert balance_loss(collapsed, torch.tensor([16, 0, 0, 0])) == pytest.approx(n_expert)


def test_a_training_step_adds_the_router_losses_and_tallies_the_load():
    """The step's loss is the cross-entropy; the weighted router losses move the weights
    (more with a larger weight) and the load since the last summary is every expert's."""
    config = sparse_config(moe_layers=[1])
    tokens = torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(0))
    results = []
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        model = GPT(config)
        spread_router(moe_layers(model)[0][1])
        train = TrainConfig(balance_loss_weight=weight, router_z_loss_weight=weight)
        experts = ExpertLoad.of(model, train)
        optimizer = configure_optimizer(model, train, "cpu")
        precision = choose_precision("float32", torch.device("cpu"))
        batches = [(tokens[:2, :-1], tokens[:2, 1:]), (tokens[2:, :-1], tokens[2:, 1:])]
        loss = train_step(model, optimizer, batches, 1e-3, 1.0, precision, experts=experts)
        results.append((loss, model.transformer.h[1].mlp.router.weight.detach().clone()))
        summary = experts.summary()
        (layer,) = summary["experts"]
        assert layer["layer"] == 1 and sum(layer["load"]) == pytest.approx(1.0)
        assert 0 < layer["entropy"] <= torch.log(torch.tensor(8.0)) + 1e-6
        assert summary["balance_loss"] >= 1.0 and summary["router_z_loss"] > 0
        assert experts.summary() == {}  # the tally starts again
    (plain, router), (weighted, weighted_router) = results
    assert plain == pytest.approx(weighted, rel=1e-6)  # the same forward: cross-entropy only
    assert not torch.equal(router, weighted_router)


def test_a_sparse_model_trains_the_same_with_activation_checkpointing():
    from raygpt.train.step import set_activation_checkpointing

    torch.manual_seed(0)
    model = GPT(sparse_config(shared_expert_hidden=16)).train()
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
    experts = ExpertLoad.of(model, TrainConfig())
    grads = []
    for checkpointed in (False, True):
        set_activation_checkpointing(model, checkpointed)
        model.zero_grad()
        loss = model(tokens[:, :-1], tokens[:, 1:])[1] + experts.loss()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name


@pytest.mark.parametrize(
    "model, message",
    [
        ({"n_expert": 4, "n_expert_per_token": 5}, "model.n_expert_per_token: must be in"),
        ({"n_expert": 4, "moe_layers": [0, 7]}, "model.moe_layers: must be distinct"),
        ({"expert_hidden": 64}, "model.expert_hidden: needs n_expert >= 1"),
        ({"n_expert": -1}, "model.n_expert: must be >= 0"),
        ({"n_expert": 4, "moe_layers": "1,3"}, "model.moe_layers: expected a list"),
    ],
)
def test_bad_expert_settings_name_the_key(model, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict({"model": {"n_layer": 2, **model}})


def test_bad_router_loss_weights_name_the_key():
    with pytest.raises(ConfigError, match="train.balance_loss_weight: must be >= 0"):
        experiment_from_dict({"train": {"balance_loss_weight": -0.1}})


@pytest.mark.parametrize(
    ("weights", "compiled"), [("int8", True), ("packed", False)], ids=["int8-compiled", "packed"]
)
def test_the_engine_serves_a_sparse_model_batched_as_each_request_alone(weights, compiled):
    """As the Serve app runs a model (INT8 experts, compiled decode steps), and as sample
    and evaluate do (oneDNN-packed float): rows joining and leaving, each request gets the
    tokens `generate` gives it alone."""
    from raygpt.inference.engine import GenerationEngine, GenerationRequest
    from raygpt.model.int8 import Int8Linear, quantize_model
    from raygpt.model.packed_linear import PackedLinear
    from raygpt.tokenizer import get_tokenizer

    torch.manual_seed(0)
    model = GPT(sparse_config(vocab_size=257, shared_expert_hidden=16, moe_layers=[1])).eval()
    spread_router(moe_layers(model)[0][1])
    if weights == "int8":
        model = quantize_model(model)
    else:
        model.use_decode_layout()
    expert = model.transformer.h[1].mlp.experts[0].c_fc
    assert isinstance(expert, Int8Linear if weights == "int8" else PackedLinear)
    assert type(model.transformer.h[1].mlp.router.weight) is torch.nn.Parameter  # stays float
    byte = get_tokenizer("byte")
    prompts = ["def f(x):", "import os\n", "class A:\n    def", "x"]
    requests = [
        GenerationRequest(tuple(byte.encode(p)), n, temperature=0, stop_at_eot=False)
        for p, n in zip(prompts, [12, 20, 3, 16], strict=True)
    ]
    engine = GenerationEngine(model, byte, max_slots=3, compile_decode=compiled)
    updates = {i: [] for i in range(len(requests))}
    for i, request in enumerate(requests):
        engine.submit(request, updates[i].append)
    while not all(u and u[-1].finish_reason for u in updates.values()):
        engine.step()
    for i, request in enumerate(requests):
        alone = model.generate(torch.tensor([request.prompt]), request.max_tokens, temperature=0)
        assert [t for u in updates[i] for t in u.token_ids] == alone[
            0, len(request.prompt) :
        ].tolist()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"router_renormalize": False}, "neither Mixtral .* nor Qwen2-MoE"),
        ({"position": "learned", "norm": "layernorm", "mlp": "gelu"}, "need the modern block"),
    ],
    ids=["no-hf-family", "gpt2-block"],
)
def test_experts_hf_cannot_hold_are_refused_at_export(tmp_path, changes, message):
    from raygpt.checkpoint import CheckpointMeta, export_hf
    from raygpt.errors import CheckpointError

    config = sparse_config(**changes)
    with pytest.raises(CheckpointError, match=message):
        export_hf(GPT(config), CheckpointMeta(model=config), tmp_path / "out")
