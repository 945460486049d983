"""Quantize a checkpoint to INT8 (torchao, per-channel symmetric) and check it against the original.

    python jobs/quantize.py --checkpoint runs/tiny_cpu/final --out runs/tiny_cpu/int8

Writes an INT8 raygpt checkpoint (int8 weights and scales in safetensors: it loads without
the original and without unpickling anything), then evaluates both on the same val windows
and fails if the INT8 val loss is more than --max-loss-increase above the original's. With
--humaneval N both also run the first N HumanEval problems (greedy, on a local Ray or
--address) and the change in pass@1 is printed beside the change in val loss.
"""

from __future__ import annotations

from raygpt import storage
from raygpt.cli import JobParser, add_ray_arguments, run_cli
from raygpt.model.int8 import METHODS, WEIGHT_ONLY
from raygpt.release.evaluation import comparison_table
from raygpt.release.int8 import REPORT, release_int8


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="the original (any format raygpt reads)"
    )
    parser.add_argument("--out", required=True, help="folder for the INT8 checkpoint")
    parser.add_argument("--method", choices=METHODS, default=WEIGHT_ONLY)
    parser.add_argument("--data", help="val data (default: the checkpoint's training dataset)")
    parser.add_argument("--windows", type=int, default=64, help="val windows to compare on")
    parser.add_argument(
        "--max-loss-increase", type=float, default=0.01, help="relative, 0.01 = 1%%"
    )
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--humaneval", type=int, metavar="N", help="also pass@1 on N problems")
    add_ray_arguments(parser)
    args = parser.parse_args()

    reports = release_int8(
        args.checkpoint,
        args.out,
        args.method,
        args.data,
        args.windows,
        args.max_loss_increase,
        args.overwrite,
    )
    print(comparison_table(reports))
    print(f"wrote {args.out} ({args.method}); report: {args.out}/{REPORT}")
    if args.humaneval:
        humaneval_both(args)


def humaneval_both(args) -> None:
    """pass@1 of the original and of the INT8 checkpoint, side by side."""
    from raygpt.ray_runtime import init_ray
    from raygpt.release.code_eval import CodeEvalOptions, EngineSource, run_code_eval
    from raygpt.release.code_report import results_table, write_results

    init_ray(args.address, args.num_cpus, args.verbose)
    options = CodeEvalOptions(limit=args.humaneval)
    code = [
        run_code_eval(EngineSource(path, name=name), options)
        for name, path in (("original", args.checkpoint), ("int8", args.out))
    ]
    print(results_table(code))
    results = storage.join(args.out, "humaneval.json")
    write_results(results, code)
    print(f"HumanEval results: {results}")


if __name__ == "__main__":
    run_cli(main)
