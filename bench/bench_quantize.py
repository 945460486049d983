"""FP32 vs INT8 decode on CPU, in one run: tokens/s at batch 1, 8 and 32, and size on disk.

By default the model is GPT-2 124M's shape with random weights (speed and size do not depend
on what the weights learned; accuracy is measured on a trained model by jobs/quantize.py);
`--checkpoint` times a real one instead. FP32 runs as raygpt serves it on CPU
(use_decode_layout: oneDNN-packed weights); INT8 is raygpt.model.int8's path (int8 weights
quantized by torchao, activations written as two int8 digits per row, an int8 GEMM). Both
decode through the generation engine, with its decode steps eager and compiled.

    python bench/bench_quantize.py
    python bench/bench_quantize.py --checkpoint .cache/models/smollm2-135m-instruct --threads 2
"""

from __future__ import annotations

import copy
import platform
import tempfile
from pathlib import Path

import torch

from raygpt.checkpoint import CheckpointMeta, load_model, save_checkpoint
from raygpt.cli import JobParser
from raygpt.config import ModelConfig
from raygpt.inference.load import checkpoint_tokenizer
from raygpt.model import GPT
from raygpt.model.int8 import quantize_model
from raygpt.release.evaluation import decode_rate
from raygpt.tokenizer import get_tokenizer


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a real model (default: random weights)")
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    fp32, tokenizer = fp32_model(args)
    int8 = quantize_model(copy.deepcopy(fp32))  # what the service does at load
    params = fp32.num_params()  # before packing: packed weights are no parameters

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, extra in (
            ("fp32", fp32, {}),
            ("int8", int8, {"quantization": {"method": int8.quantization}}),
        ):
            meta = CheckpointMeta(model=model.config, extra=extra)
            path = save_checkpoint(Path(tmp) / name, model, meta)
            size = (path / "model.safetensors").stat().st_size / 1e6
            if model is fp32:
                model.use_decode_layout()  # after saving: packed weights are not saved
            for compiled in (False, True):
                rates = [
                    decode_rate(model, tokenizer, b, args.new_tokens, compiled=compiled)
                    for b in batches
                ]
                rows.append((f"{name} {'compiled' if compiled else 'eager'}", size, rates))
    config = fp32.config
    print(
        f"\n{Path(args.checkpoint).name if args.checkpoint else 'random weights'}: "
        f"GPT {config.n_layer}L/{config.n_head}H/{config.n_embd} "
        f"({params / 1e6:.1f}M), {args.new_tokens} new tokens, "
        f"{args.threads} threads, CPU {platform.machine()}, torch {torch.__version__}"
    )
    print(f"{'model':18} {'size MB':>9}" + "".join(f" {f'tok/s b{b}':>10}" for b in batches))
    for name, size, rates in rows:
        print(f"{name:18} {size:9.1f}" + "".join(f" {r:10.1f}" for r in rates))
    base, int8_row = rows[1], rows[3]  # both compiled, as served
    speedups = ", ".join(
        f"batch {b} {i / f:.2f}x" for b, f, i in zip(batches, base[2], int8_row[2], strict=True)
    )
    print(f"int8 vs fp32 (compiled): {base[1] / int8_row[1]:.2f}x smaller, {speedups}")


def fp32_model(args) -> tuple[GPT, object]:
    """The fp32 model (not yet laid out for decoding) and its tokenizer."""
    if args.checkpoint:
        fp32, meta = load_model(args.checkpoint)
        return fp32.eval(), checkpoint_tokenizer(meta)
    config = ModelConfig(
        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, activation="gelu_tanh"
    )
    torch.manual_seed(0)
    return GPT(config).eval(), get_tokenizer("gpt2")


if __name__ == "__main__":
    main()
