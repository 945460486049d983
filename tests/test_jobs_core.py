"""The core entrypoints (sample, convert) run as a user runs them, in a fresh interpreter."""

import pytest
import torch

from raygpt.checkpoint import CheckpointMeta, load_model, save_checkpoint
from raygpt.config import ModelConfig
from raygpt.model import GPT

from .conftest import run_job


def test_sample_from_an_hf_folder_and_a_prompt_file(hf_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("def fibonacci(n):")
    result = run_job(
        "sample.py",
        "--checkpoint",
        str(hf_dir),
        "--prompt",
        f"FILE:{prompt}",
        "--num_samples",
        "2",
        "--max_new_tokens",
        "12",
        "--no_stop",
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split("---------------\n")
    assert len(samples) == 3 and all(s.startswith("def fibonacci(n):") for s in samples[:2])
    assert "24 tokens in" in samples[2]


@pytest.mark.parametrize(
    "speculate", [[], ["--speculate", "ngram", "--ngram_min", "1"], ["--speculate", "self:1"]]
)
def test_greedy_sample_matches_the_library(tmp_path, speculate):
    """Plain, and through the engine with speculative decoding: the same greedy text."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=257)).eval()
    save_checkpoint(tmp_path / "ckpt", model, CheckpointMeta(model=model.config, tokenizer="byte"))
    result = run_job(
        "sample.py",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--prompt",
        "abc",
        "--temperature",
        "0",
        "--max_new_tokens",
        "20",
        "--no_stop",
        *speculate,
    )
    assert result.returncode == 0, result.stderr
    if speculate:
        assert "speculated" in result.stdout and "kept 0%" not in result.stdout
    expected = model.generate(torch.tensor([list(b"abc")]), 20, temperature=0)[0].tolist()
    text = bytes(expected).decode("utf-8", errors="replace")
    assert result.stdout.startswith(text + "\n")


def test_sample_with_a_bad_checkpoint_path_is_one_clear_line(tmp_path):
    result = run_job("sample.py", "--checkpoint", str(tmp_path / "missing"), "--prompt", "x")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'missing'}"


def test_convert_hf_to_raygpt_and_back(hf_dir, tmp_path):
    result = run_job("convert.py", "--checkpoint", str(hf_dir), "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    result = run_job(
        "convert.py",
        "--checkpoint",
        str(tmp_path / "r"),
        "--out",
        str(tmp_path / "h"),
        "--to",
        "hf",
    )
    assert result.returncode == 0, result.stderr
    original, _ = load_model(hf_dir)
    final, meta = load_model(tmp_path / "h")
    assert meta.source == "hf-gpt2"
    for (name, a), (_, b) in zip(
        original.state_dict().items(), final.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
