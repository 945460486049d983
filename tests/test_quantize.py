"""INT8 quantization: size, accuracy, coherent generation, the jobs and their errors."""

import json
import shutil

import pytest
import torch

from raygpt.checkpoint import load_model, save_checkpoint
from raygpt.data.shards import val_windows
from raygpt.errors import CheckpointError
from raygpt.model.int8 import Int8Linear, quantize_model
from raygpt.release.evaluation import mean_loss

from .conftest import run_job


def int8_copy(trained_tiny, tmp_path):
    model, meta = load_model(trained_tiny)
    quantized = quantize_model(model)
    meta.extra["quantization"] = {"method": quantized.quantization}
    return save_checkpoint(tmp_path / "int8", quantized, meta)


def test_int8_checkpoint_is_3_5x_smaller_and_stands_alone(trained_tiny, tmp_path):
    original = shutil.copytree(trained_tiny, tmp_path / "fp32")
    int8 = int8_copy(original, tmp_path)
    ratio = (original / "model.safetensors").stat().st_size / (
        int8 / "model.safetensors"
    ).stat().st_size
    assert ratio >= 3.5
    shutil.rmtree(original)  # loads without the fp32 checkpoint, from plain tensors only
    model, meta = load_model(int8)
    assert meta.extra["quantization"]["method"] == "int8-weight-only"
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 2 * 4 + 1  # 4 per block, plus the tied head
    assert all(m.qdata.dtype == torch.int8 for m in linears)
    assert sorted(p.name for p in int8.iterdir()) == ["model.safetensors", "raygpt.json"]


def test_int8_accuracy_and_greedy_generation_match_the_original(
    trained_tiny, byte_shards, tmp_path
):
    original, _ = load_model(trained_tiny)
    int8, _ = load_model(int8_copy(trained_tiny, tmp_path))
    windows = val_windows(byte_shards, original.config.block_size, 32)
    base, quantized = mean_loss(original, windows), mean_loss(int8, windows)
    assert base < 3.0  # the model did learn (uniform over bytes would be ~5.5)
    assert abs(quantized - base) / base < 0.01
    # Greedy choices of real code: along the original's greedy continuation, INT8 picks the same
    # next token wherever the original's choice is clear (top two logits 0.1 apart; INT8 moves
    # logits by about 0.01 here). Near-ties may flip, and after a flip two texts legitimately
    # diverge, so choices are compared position by position on one shared text (teacher forcing).
    clear = agree = 0
    for prompt in ("def __init__(self", "import os\nimport ", "    return "):
        ids = torch.tensor([list(prompt.encode())])
        text = original.generate(ids, 32, temperature=0)
        with torch.no_grad():
            a = original(text)[0][0, ids.shape[1] - 1 : -1, :257]
            b = int8(text)[0][0, ids.shape[1] - 1 : -1, :257]
        assert (a - b).abs().max() < 0.05 * a.abs().max()
        top2 = a.topk(2, dim=-1).values
        margin = top2[:, 0] - top2[:, 1]
        decided = margin > 0.1
        clear += int(decided.sum())
        agree += int((a.argmax(-1) == b.argmax(-1))[decided].sum())
    assert clear >= 48  # most of the 96 choices are clear: the check is not vacuous
    assert agree == clear


def test_int8_matmul_on_cpu_follows_the_dequantized_weights_and_rows_are_independent():
    """The CPU path quantizes activations too: two int8 digits per value stay within 2e-4
    of the dequantized weights' product (one digit is off by about 1e-2), and each row comes
    out bit-identical whatever rows share its matmul, eager and compiled."""
    torch.manual_seed(0)
    weight = torch.randn(96, 160)
    scale = weight.abs().amax(1) / 127
    layer = Int8Linear(torch.round(weight / scale[:, None]).to(torch.int8), scale, None)
    x = torch.randn(12, 160) * torch.linspace(0.01, 30, 160)  # outlier channels, as in LLMs
    x[3] = 0  # a zero row has no scale to take
    exact = x.double() @ (layer.qdata.double() * scale.double()[:, None]).T
    with torch.no_grad():
        for run in (layer, torch.compile(layer, dynamic=True)):
            together = run(x)
            assert ((together - exact).abs().max() / exact.abs().max()) < 2e-4
            assert torch.equal(together[3], torch.zeros(96))
            for rows in (slice(0, 1), slice(5, 7), slice(2, 12)):
                assert torch.equal(run(x[rows]), together[rows])


def test_quantizing_twice_is_refused(trained_tiny, tmp_path):
    model, _ = load_model(int8_copy(trained_tiny, tmp_path))
    with pytest.raises(CheckpointError, match="already INT8"):
        quantize_model(model)


def test_quantize_job_end_to_end(trained_tiny, tmp_path):
    out = tmp_path / "int8"
    result = run_job(
        "quantize.py", "--checkpoint", str(trained_tiny), "--out", str(out), "--windows", "16"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "int8 vs original: val loss" in result.stdout
    report = json.loads((out / "eval_report.json").read_text())
    assert [r["name"] for r in report] == ["original", "int8"]
    assert report[1]["quantization"] == "int8-weight-only"
    assert report[0]["size_mb"] / report[1]["size_mb"] > 3.0  # folder sizes, metadata included
    for r in report:
        assert r["decode_tokens_per_s"]["batch 1"] > 0 and r["peak_memory_mb"] > 0
    meta = json.loads((out / "raygpt.json").read_text())
    assert meta["extra"]["quantization"]["library"].startswith("torchao ")

    again = run_job("quantize.py", "--checkpoint", str(out), "--out", str(tmp_path / "x"))
    assert again.returncode == 2 and "is already INT8" in again.stderr.strip().splitlines()[-1]
    strict = run_job(
        "quantize.py",
        "--checkpoint",
        str(trained_tiny),
        "--out",
        str(tmp_path / "y"),
        "--windows",
        "16",
        "--max_loss_increase",
        "-1",
    )
    assert strict.returncode == 2
    assert "do not serve" in strict.stderr.strip().splitlines()[-1]


def test_quantize_job_bad_checkpoints(tmp_path):
    missing = run_job(
        "quantize.py", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")
    )
    assert missing.returncode == 2
    assert (
        missing.stderr.strip().splitlines()[-1]
        == f"error: checkpoint not found: {tmp_path / 'nope'}"
    )
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "raygpt.json").write_text("{broken")
    result = run_job("quantize.py", "--checkpoint", str(corrupt), "--out", str(tmp_path / "o2"))
    assert (
        result.returncode == 2
        and "raygpt.json is corrupt" in result.stderr.strip().splitlines()[-1]
    )


def test_int8_checkpoints_are_not_exported_or_trained_from(trained_tiny, tmp_path):
    int8 = int8_copy(trained_tiny, tmp_path)
    result = run_job(
        "convert.py", "--checkpoint", str(int8), "--out", str(tmp_path / "hf"), "--to", "hf"
    )
    assert result.returncode == 2 and "cannot be exported" in result.stderr.strip().splitlines()[-1]
    inside = run_job(
        "quantize.py", "--checkpoint", str(trained_tiny), "--out", str(trained_tiny / "int8")
    )
    assert inside.returncode == 2 and "must be outside" in inside.stderr.strip().splitlines()[-1]


def test_a_nan_loss_fails_the_int8_gate(byte_shards, tmp_path):
    """NaN compares as "not above the limit": the gate once let a broken model through."""
    from raygpt.checkpoint import CheckpointMeta
    from raygpt.config import ModelConfig
    from raygpt.errors import RaygptError
    from raygpt.model import GPT
    from raygpt.release.int8 import release_int8

    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=257)
    model = GPT(config)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan", model, CheckpointMeta(model=config, tokenizer="byte"))
    with pytest.raises(RaygptError, match="val loss is not a finite number"):
        release_int8(tmp_path / "nan", tmp_path / "int8", data=byte_shards, windows=4)


def test_peak_memory_is_the_probes_own_not_its_parents(trained_tiny):
    """The probe runs in a child process; a parent holding 1.5 GB (a pipeline driver with a
    model loaded) must not show up in the child's peak."""
    from raygpt.release.evaluation import peak_memory_mb

    ballast = torch.ones(1_500_000_000 // 4)  # 1.5 GB, touched
    alone = peak_memory_mb(str(trained_tiny))
    del ballast
    assert alone is not None and alone < 1200, alone  # torch's runtime and a 3 MB model


def test_bits_per_byte_divides_the_loss_by_the_bytes_the_tokens_spell():
    """A byte model: one byte a token, so bits per byte is the loss in bits (end-of-text,
    which spells no byte, counts neither). GPT-2's BPE: the bytes counted are the text's."""
    import math

    import numpy as np

    from raygpt.config import ModelConfig
    from raygpt.model import GPT
    from raygpt.release.evaluation import loss_and_bits_per_byte, mean_loss, token_byte_lengths
    from raygpt.tokenizer import get_tokenizer

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=257)).eval()
    byte = get_tokenizer("byte")
    lengths = token_byte_lengths(byte, model.config.padded_vocab_size)
    windows = np.random.default_rng(0).integers(0, 256, size=(6, 17))
    loss, bpb = loss_and_bits_per_byte(model, windows, lengths)
    assert loss == pytest.approx(mean_loss(model, windows), rel=1e-5)
    assert bpb == pytest.approx(loss / math.log(2), rel=1e-5)
    windows[:, 5] = byte.eot_token
    _, with_eot = loss_and_bits_per_byte(model, windows, lengths)
    assert with_eot != pytest.approx(bpb)

    gpt2 = get_tokenizer("gpt2")
    text = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"
    ids = [*gpt2.encode(text), gpt2.eot_token]
    counted = token_byte_lengths(gpt2, 50304)[ids].sum()
    assert counted == len(text.encode())
