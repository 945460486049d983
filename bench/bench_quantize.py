"""FP32 vs INT8 decode on CPU, in one run: tokens/s at batch 1 and 8, and size on disk.

The model is GPT-2 124M's shape with random weights (speed and size do not depend on what
the weights learned; accuracy is measured on a trained model by jobs/quantize.py). FP32
runs as raygpt serves it on CPU (use_decode_layout); INT8 is raygpt.model.int8's
weight-only path (torchao-quantized weights, fused int8 matvec). Both decode through the
generation engine, with its decode steps eager and compiled (compiled_block_forward).

    python bench/bench_quantize.py
"""

from __future__ import annotations

import copy
import platform
import tempfile
from pathlib import Path

import torch

from raygpt.checkpoint import CheckpointMeta, save_checkpoint
from raygpt.cli import JobParser
from raygpt.config import ModelConfig
from raygpt.model import GPT
from raygpt.model.int8 import quantize_model
from raygpt.release.evaluation import decode_rate
from raygpt.tokenizer import get_tokenizer


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig(
        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, activation="gelu_tanh"
    )
    torch.manual_seed(0)
    fp32 = GPT(config).eval()
    int8 = quantize_model(copy.deepcopy(fp32))
    fp32.use_decode_layout()

    tokenizer = get_tokenizer("gpt2")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, extra in (
            ("fp32", fp32, {}),
            ("int8 weight-only", int8, {"quantization": {"method": "int8-weight-only"}}),
        ):
            path = save_checkpoint(
                Path(tmp) / name, model, CheckpointMeta(model=config, extra=extra)
            )
            size = (path / "model.safetensors").stat().st_size / 1e6
            for compiled in (False, True):
                rates = [
                    decode_rate(model, tokenizer, b, args.new_tokens, compiled=compiled)
                    for b in (1, 8)
                ]
                label = f"{name} {'compiled' if compiled else 'eager'}"
                rows.append((label, size, *rates))
    print(
        f"\nGPT {config.n_layer}L/{config.n_head}H/{config.n_embd} ({fp32.num_params() / 1e6:.1f}M), "
        f"{args.new_tokens} new tokens, {args.threads} threads, CPU {platform.machine()}"
    )
    print(f"{'model':27} {'size MB':>9} {'tok/s b1':>9} {'tok/s b8':>9}")
    for name, size, b1, b8 in rows:
        print(f"{name:27} {size:9.1f} {b1:9.1f} {b8:9.1f}")
    base, int8_row = rows[1], rows[3]  # both compiled, as served
    print(
        f"int8 vs fp32 (compiled): {base[1] / int8_row[1]:.2f}x smaller, "
        f"batch 1 {int8_row[2] / base[2]:.2f}x, batch 8 {int8_row[3] / base[3]:.2f}x"
    )


if __name__ == "__main__":
    main()
