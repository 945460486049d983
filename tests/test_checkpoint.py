import json

import pytest
import torch
from transformers import GPT2LMHeadModel

from raygpt.checkpoint import CheckpointMeta, load_model, save_checkpoint
from raygpt.checkpoint.hf_gpt2 import export_hf_gpt2
from raygpt.config import ModelConfig
from raygpt.errors import CheckpointError
from raygpt.model import GPT

from .conftest import make_hf_gpt2


def logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=257, bias=False)
    ).eval()
    meta = CheckpointMeta(
        model=model.config, tokenizer="byte", step=12, train={"train": {"batch_size": 4}}
    )
    return model, meta, save_checkpoint(tmp_path / "ckpt", model, meta)


def test_raygpt_round_trip_is_exact(tiny):
    model, meta, path = tiny
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "raygpt.json"]
    loaded, loaded_meta = load_model(path)
    assert loaded_meta == meta
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied after loading
    assert len(list(loaded.parameters())) == len(list(model.parameters()))
    idx = torch.randint(0, 257, (2, 32))
    assert torch.equal(logits(model, idx), logits(loaded, idx))


def test_export_to_transformers_keeps_logits(hf_dir, hf_model, tmp_path):
    model, meta = load_model(hf_dir)
    export_hf_gpt2(model, meta, tmp_path / "hf")
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 50257, (2, 40))
    with torch.no_grad():
        assert (reloaded(idx).logits - hf_model(idx).logits).abs().max().item() < 1e-4
    # and back into raygpt
    again, _ = load_model(tmp_path / "hf")
    assert (logits(again, idx) - logits(model, idx)).abs().max().item() < 1e-4


def test_export_of_a_bias_free_model_loads_in_transformers(tiny, tmp_path):
    model, meta, _ = tiny  # bias=False, byte vocabulary
    export_hf_gpt2(model, meta, tmp_path / "hf")
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 257, (1, 32))
    with torch.no_grad():
        diff = reloaded(idx).logits - logits(model, idx)[..., :257]
    assert diff.abs().max().item() < 1e-4


def test_hf_pytorch_bin_folder_imports(tmp_path):
    hf = make_hf_gpt2(tmp_path, legacy_bin=True, seed=3, activation_function="gelu")
    model, _ = load_model(tmp_path)
    assert model.config.activation == "gelu"
    idx = torch.randint(0, 50257, (1, 20))
    with torch.no_grad():
        assert (logits(model, idx)[..., :50257] - hf(idx).logits).abs().max().item() < 1e-4


def nanogpt_checkpoint(model: GPT, compiled: bool) -> dict:
    """What nanoGPT's train.py saves: its state dict (maybe from a compiled model) and model_args."""
    prefix = "_orig_mod." if compiled else ""
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    for i in range(model.config.n_layer):  # the causal-mask buffer of its non-flash path
        state[f"{prefix}transformer.h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
    c = model.config
    return {
        "model": state,
        "optimizer": {"state": {}, "param_groups": []},
        "model_args": dict(
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
            block_size=c.block_size,
            bias=c.bias,
            vocab_size=c.padded_vocab_size,
            dropout=0.0,
        ),
        "iter_num": 250,
        "best_val_loss": torch.tensor(1.5),
        "config": {"dataset": "openwebtext", "batch_size": 12},
    }


@pytest.mark.parametrize("compiled", [False, True])
def test_nanogpt_ckpt_imports_with_or_without_compile_prefix(tiny, tmp_path, compiled):
    model, _, _ = tiny
    torch.save(nanogpt_checkpoint(model, compiled), tmp_path / "ckpt.pt")
    loaded, meta = load_model(tmp_path)  # a folder holding ckpt.pt, as nanoGPT's out_dir
    assert meta.step == 250 and meta.source == "nanogpt" and meta.extra["best_val_loss"] == 1.5
    idx = torch.randint(0, 257, (2, 32))
    assert torch.equal(logits(loaded, idx), logits(model, idx))


def test_pickled_objects_in_a_ckpt_are_refused(tiny, tmp_path):
    model, _, _ = tiny
    ckpt = nanogpt_checkpoint(model, compiled=False)
    ckpt["config"] = CheckpointMeta(model=model.config)  # an arbitrary class: needs full unpickling
    torch.save(ckpt, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(tmp_path / "evil.pt")


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="is not a checkpoint: no raygpt.json"):
        load_model(tmp_path)


def test_truncated_weights_are_reported_as_corrupt(tiny):
    _, _, path = tiny
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        load_model(path)


def test_corrupt_metadata(tiny):
    _, _, path = tiny
    (path / "raygpt.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="raygpt.json is corrupt"):
        load_model(path)


def test_metadata_that_disagrees_with_the_weights(tiny):
    _, _, path = tiny
    meta = json.loads((path / "raygpt.json").read_text())
    meta["model"]["n_layer"] = 3
    (path / "raygpt.json").write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError, match=r"weights do not match the model config \(missing: transformer.h.2"
    ):
        load_model(path)
    meta["model"]["n_layer"] = 2
    meta["model"]["n_embd"] = 48
    (path / "raygpt.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="size mismatch"):
        load_model(path)
    meta["model"]["n_head"] = 5
    (path / "raygpt.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid metadata.*not divisible"):
        load_model(path)


def test_hf_folder_of_another_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(
        CheckpointError, match="a Hugging Face 'mamba' model; raygpt reads gpt2 and"
    ):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))  # incomplete
    with pytest.raises(CheckpointError, match=r"config.json: model.n_layer: expected an integer"):
        load_model(tmp_path)
