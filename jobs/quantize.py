"""Quantize a checkpoint to INT8 (torchao, per-channel symmetric) and check it against the original.

    python jobs/quantize.py --checkpoint runs/tiny_cpu/final --out runs/tiny_cpu/int8

Writes an INT8 raygpt checkpoint (int8 weights and scales in safetensors: it loads without
the original and without unpickling anything), then evaluates both on the same val windows
and fails if the INT8 val loss is more than --max_loss_increase above the original's.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
from pathlib import Path

from raygpt.checkpoint import load_model, save_checkpoint
from raygpt.cli import run_cli
from raygpt.errors import CheckpointError, RaygptError
from raygpt.evaluation import (
    comparison_table,
    evaluate_checkpoint,
    relative_change,
    training_dataset,
    val_windows,
    write_report,
)
from raygpt.quantize import METHODS, WEIGHT_ONLY, quantize_model
from raygpt.shards import fresh_output_dir

REPORT = "eval_report.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="the original (any format raygpt reads)"
    )
    parser.add_argument("--out", required=True, help="folder for the INT8 checkpoint")
    parser.add_argument("--method", choices=METHODS, default=WEIGHT_ONLY)
    parser.add_argument("--data", help="val data (default: the checkpoint's training dataset)")
    parser.add_argument("--windows", type=int, default=64, help="val windows to compare on")
    parser.add_argument(
        "--max_loss_increase", type=float, default=0.01, help="relative, 0.01 = 1%%"
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    model, meta = load_model(args.checkpoint)
    if meta.extra.get("quantization"):
        raise CheckpointError(
            f"{args.checkpoint} is already INT8: quantize the original checkpoint"
        )
    data = Path(args.data) if args.data else training_dataset(args.checkpoint)
    windows = val_windows(data, model.config.block_size, args.windows)  # checked before the work
    source, target = Path(args.checkpoint).resolve(), Path(args.out).resolve()
    if target == source or source in target.parents:
        raise RaygptError(f"--out {args.out} must be outside the original checkpoint")
    out = fresh_output_dir(Path(args.out), args.overwrite)

    quantized = quantize_model(model, args.method)
    info = {
        "method": args.method,
        "scheme": "int8 weights, symmetric, one scale per output channel; float activations",
        "library": f"torchao {importlib.metadata.version('torchao')}",
        "quantized_from": str(args.checkpoint),
    }
    save_checkpoint(
        out, quantized, dataclasses.replace(meta, extra={**meta.extra, "quantization": info})
    )

    reports = [
        evaluate_checkpoint("original", args.checkpoint, windows),
        evaluate_checkpoint("int8", str(out), windows),
    ]
    write_report(out / REPORT, reports)
    print(comparison_table(reports))
    increase = relative_change(reports[0].val_loss, reports[1].val_loss)
    if increase > args.max_loss_increase:
        raise RaygptError(
            f"INT8 val loss {reports[1].val_loss:.4f} is {increase:.2%} above the original's "
            f"{reports[0].val_loss:.4f} (limit {args.max_loss_increase:.0%}): do not serve {out}"
        )
    print(f"wrote {out} ({args.method}); report: {out / REPORT}")


if __name__ == "__main__":
    run_cli(main)
