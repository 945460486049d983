"""Ray Train runs on a real local Ray: DDP equivalence, resume, fault tolerance, learning."""

import json
import math
from pathlib import Path

import pytest
import torch

from raygpt.checkpoint import load_model, read_meta
from raygpt.config import experiment_from_dict
from raygpt.errors import ConfigError, RaygptError
from raygpt.model import GPT
from raygpt.train.launch import plan_training, run_training
from raygpt.train.loop import FAILURE_ENV
from raygpt.train.run_log import read_metrics

from .conftest import run_job

TINY = {
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "bias": False},
    "data": {"tokenizer": "byte"},
    "train": {
        "max_iters": 6,
        "lr_decay_iters": 6,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "min_lr": 3e-4,
        "warmup_iters": 2,
        "eval_interval": 3,
        "eval_iters": 2,
        "log_interval": 3,
        "shuffle_buffer": 64,
        "dtype": "float32",
    },
    "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
}


def experiment(data_dir, out_dir, **sections):
    raw = json.loads(json.dumps(TINY))
    raw["data"]["dataset"] = str(data_dir)
    raw["train"]["out_dir"] = str(out_dir)
    for section, values in sections.items():
        raw[section].update(values)
    return experiment_from_dict(raw)


def train(config):
    return run_training(plan_training(config))


def weights(path):
    model, meta = load_model(path)
    return {k: v.clone() for k, v in model.state_dict().items()}, meta


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), name


MODERN = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1}


@pytest.mark.parametrize("block", [{}, {**MODERN, "tie_embeddings": False}], ids=["gpt2", "modern"])
def test_two_ddp_workers_equal_one_worker_with_double_accumulation(
    ray_session, byte_shards, tmp_path, block
):
    """DDP's math is the block's own business only through the gradients: the GPT-2 block shows
    2 workers = 1 worker x 2 accumulated; the modern block shows FSDP = DDP (RoPE buffers,
    GQA, an untied head sharded and gathered)."""
    two = train(experiment(byte_shards, tmp_path / "two", model=block, scaling={"num_workers": 2}))
    w2, meta = weights(two.final_model)
    assert meta.step == 6 and meta.tokenizer == "byte"
    if not block:
        accumulate = {"gradient_accumulation_steps": 2}
        one = train(experiment(byte_shards, tmp_path / "one", model=block, train=accumulate))
        assert_same_weights(weights(one.final_model)[0], w2, atol=1e-5)
    else:  # FSDP's sharding once, on the block with the most to shard
        fsdp = train(
            experiment(
                byte_shards,
                tmp_path / "fsdp",
                model=block,
                scaling={"num_workers": 2, "strategy": "fsdp"},
            )
        )
        assert_same_weights(w2, weights(fsdp.final_model)[0], atol=1e-5)  # sharded, same math
    # and training moved them away from the (seeded) initial weights
    torch.manual_seed(1337)
    initial = GPT(meta.model).state_dict()
    name = "transformer.h.0.attn.c_attn.weight"
    assert (initial[name] - w2[name]).abs().max() > 1e-3


def test_a_mixture_of_experts_trains_sharded_and_logs_its_expert_load(
    ray_session, byte_shards, tmp_path
):
    """One sparse layer of 4 experts under FSDP on 2 workers: every log line carries both
    ranks' expert load (fractions summing to 1, its entropy) and the router losses; the
    final model is the mixture, and it generates."""
    from raygpt.train.progress import progress_line

    sparse = {**MODERN, "n_expert": 4, "expert_hidden": 32, "moe_layers": [1]}
    result = train(
        experiment(
            byte_shards,
            tmp_path / "moe",
            model=sparse,
            # one checkpoint (an FSDP gather) and the final export: the least a run saves
            train={"max_iters": 4, "lr_decay_iters": 4, "eval_interval": 4, "log_interval": 2},
            scaling={"num_workers": 2, "strategy": "fsdp"},
        )
    )
    records = [r for r in read_metrics(result.run_dir) if "loss" in r]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        (layer,) = record["experts"]
        assert layer["layer"] == 1 and len(layer["load"]) == 4
        assert sum(layer["load"]) == pytest.approx(1.0)
        assert 0 < layer["entropy"] <= math.log(4) + 1e-9
        assert record["balance_loss"] >= 1.0 and record["router_z_loss"] > 0
        assert "| L1 " in progress_line(record, 4)
    model, meta = load_model(result.final_model)
    assert meta.model.n_expert == 4 and meta.step == 4
    assert model.generate(torch.tensor([[1, 2, 3]]), 4, temperature=0).shape == (1, 7)


EVERY_2 = {"checkpoint_interval": 2, "eval_interval": 2, "log_interval": 2}


def test_resume_continues_exactly_past_an_unreadable_checkpoint(ray_session, byte_shards, tmp_path):
    """Stopped at step 4 with its newest checkpoint half-written (a crash mid-write), the run
    resumes from step 2 and ends with the weights and optimizer state of a run never stopped."""
    straight = train(experiment(byte_shards, tmp_path / "straight", train=EVERY_2))
    stopped = train(experiment(byte_shards, tmp_path / "run", train={**EVERY_2, "max_iters": 4}))
    assert stopped.steps == 4
    # the data order is part of what a resume continues: a change is refused, by name
    for key, value in [("batch_size", 8), ("seed", 7), ("shuffle_buffer", 0)]:
        changed = experiment(byte_shards, tmp_path / "run", train={**EVERY_2, key: value})
        with pytest.raises(ConfigError, match=rf"train.{key} changed from .* to {value}"):
            plan_training(changed)
    optimizer = tmp_path / "run" / "step_000004" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    resumed = train(experiment(byte_shards, tmp_path / "run", train=EVERY_2))  # same out_dir
    assert resumed.steps == 6
    events = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "resumed"]
    assert events == [{"event": "resumed", "step": 2, "unreadable": "step_000004"}]
    assert (tmp_path / "run" / "step_000004.redo1").is_dir()  # redone, saved beside it
    assert_same_weights(weights(straight.final_model)[0], weights(resumed.final_model)[0], 1e-6)
    opt_a = torch.load(tmp_path / "straight" / "step_000006" / "optimizer.pt", weights_only=True)
    opt_b = torch.load(tmp_path / "run" / "step_000006.redo1" / "optimizer.pt", weights_only=True)
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for name, slots in opt_a["state"].items():
        for slot, value in slots.items():
            assert torch.allclose(
                torch.as_tensor(value), torch.as_tensor(opt_b["state"][name][slot]), atol=1e-6
            ), (name, slot)


def test_a_diverging_run_stops_with_the_step_and_writes_no_nan(
    ray_session, byte_shards, tmp_path, monkeypatch
):
    every_step = {"checkpoint_interval": 1, "eval_interval": 1, "log_interval": 1}
    exploding = {"learning_rate": 1e30, "min_lr": 0.0, "warmup_iters": 0, "grad_clip": 0.0}
    # The dataset named relative to the driver's working directory, as `make demo` names
    # data/stdlib_byte: Train workers run elsewhere and must still find it.
    monkeypatch.chdir(byte_shards.parent)
    config = experiment(byte_shards.name, tmp_path / "run", train={**every_step, **exploding})
    with pytest.raises(RaygptError, match=r"is nan at step \d: training diverged") as raised:
        train(config)
    assert "last good checkpoint" in str(raised.value) or "no checkpoint" in str(raised.value)
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in logged and "Infinity" not in logged
    for checkpoint in (tmp_path / "run").glob("step_*"):
        assert math.isfinite(read_meta(checkpoint).extra["best_val_loss"])


def test_a_worker_that_dies_is_restarted_from_the_last_checkpoint(
    ray_session, byte_shards, tmp_path, monkeypatch
):
    marker = tmp_path / "died"
    monkeypatch.setenv(FAILURE_ENV, f"5:1:{marker}")
    config = experiment(
        byte_shards,
        tmp_path / "run",
        train={
            "max_iters": 8,
            "lr_decay_iters": 8,
            "checkpoint_interval": 2,
            "eval_interval": 2,
            "log_interval": 2,
        },
        scaling={"num_workers": 2, "max_failures": 1},
    )
    result = train(config)
    assert marker.exists(), "the injected failure did not happen"
    assert result.steps == 8
    resumed = [r["step"] for r in read_metrics(tmp_path / "run") if r.get("event") == "resumed"]
    assert resumed == [4]  # the checkpoint before the failure at step 5, not from scratch
    assert load_model(result.final_model)[1].step == 8


def test_always_save_checkpoint_false_saves_only_improvements_and_the_last(
    ray_session, byte_shards, tmp_path
):
    """nanoGPT's switch: with it off, an evaluation that does not improve writes nothing."""
    frozen = {"learning_rate": 0.0, "min_lr": 0.0, "eval_interval": 2, "log_interval": 2}
    train(
        experiment(byte_shards, tmp_path / "off", train={**frozen, "always_save_checkpoint": False})
    )
    # lr 0: the val loss of step 2 is never beaten, so step 4 is not saved; the last always is
    # (with the switch on, the default, every evaluation saves: step_000004 in the resume test)
    assert sorted(p.name for p in (tmp_path / "off").glob("step_*")) == [
        "step_000002",
        "step_000006",
    ]


def test_the_tiny_config_learns_on_stdlib_shards(tiny_run):
    """The session's trained model (serving and INT8 use it): its run, read back."""
    run_dir = Path(tiny_run.final_model).parent
    vals = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
    assert len(vals) == 4  # steps 0, 50, 100, 150
    assert vals[0] > 5.0  # about ln(257): nothing learned yet
    assert vals[-1] < vals[0] - 2.0
    assert (run_dir / "loss.png").stat().st_size > 10_000
    records = [r for r in read_metrics(run_dir) if "tokens_per_s" in r]
    assert records and all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in records)  # CPU
    assert tiny_run.best_val_loss == min(vals[1:])
    # every checkpoint of the run records it under one key: the step checkpoints and final/
    for checkpoint in (tiny_run.best_checkpoint, tiny_run.final_model):
        assert read_meta(checkpoint).extra == {"best_val_loss": tiny_run.best_val_loss}


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_layers=4", r"unknown key 'model.n_layers'"),
        ("model.n_head=3", r"model.n_embd: n_embd=32 is not divisible by n_head=3"),
        ("train.batch_size=100000", r"train.batch_size: one step needs 100000 windows"),
        ("train.init_from=resume", r"has no checkpoints to resume from"),
        ("train.init_from=/no/such/model", r"train.init_from: checkpoint not found"),
    ],
)
def test_bad_configs_fail_before_any_worker_starts(byte_shards, tmp_path, override, message):
    import re

    config_file = tmp_path / "exp.json.yaml"
    raw = json.loads(json.dumps(TINY))
    raw["data"]["dataset"] = str(byte_shards)
    raw["train"]["out_dir"] = str(tmp_path / "run")
    config_file.write_text(json.dumps(raw))  # JSON is YAML
    result = run_job("train.py", "--config", str(config_file), override, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), last
    assert "Started a local Ray instance" not in result.stderr  # failed before Ray started


def test_fine_tune_from_a_hugging_face_gpt2_folder(
    ray_session, stdlib_shards, hf_dir, hf_model, tmp_path, monkeypatch
):
    """The seed's code assistant, in miniature: init_from a local HF GPT-2, block size cropped.
    The folder is named relative to the driver's working directory, as the SmolLM2 configs
    name .cache/models/...: the Train workers, which run elsewhere, must still find it."""
    monkeypatch.chdir(hf_dir.parent)
    config = experiment(
        stdlib_shards.out_dir,
        tmp_path / "ft",
        data={"tokenizer": "gpt2"},
        model={"block_size": 32, "dropout": 0.1},
        train={
            "init_from": hf_dir.name,
            "max_iters": 3,
            "lr_decay_iters": 3,
            "learning_rate": 1e-4,
            "min_lr": 1e-5,
        },
    )
    result = train(config)
    model, meta = load_model(result.final_model)
    assert (model.config.n_embd, model.config.block_size, model.config.vocab_size) == (
        64,
        32,
        50257,
    )
    assert meta.tokenizer == "gpt2" and meta.step == 3
    # it started from the HF weights: the first eval is the HF model's own loss on that data
    first = next(r for r in read_metrics(tmp_path / "ft") if "val_loss" in r)
    assert first["val_loss"] == pytest.approx(
        10.82, abs=0.3
    )  # a random 50257-way GPT-2: ~ln(50257)
    moved = (model.transformer.wte.weight[:50257] - hf_model.transformer.wte.weight).abs().max()
    assert 0 < float(moved) < 0.01  # three small steps away from the pretrained weights
