"""Measure checkpoints side by side: val loss, perplexity, size, peak memory, decode tokens/s.

    python jobs/evaluate.py --checkpoint runs/tiny_cpu/final --checkpoint runs/tiny_cpu/int8

Every checkpoint sees the same val windows (from --data, or the dataset its training used)
and the same prompt; the first one is the baseline. Writes a JSON report (--report).
"""

from __future__ import annotations

from raygpt import storage
from raygpt.checkpoint import load_model
from raygpt.cli import JobParser, run_cli
from raygpt.data.shards import val_windows
from raygpt.errors import RaygptError
from raygpt.release.evaluation import (
    comparison_table,
    evaluate_checkpoint,
    training_dataset,
    write_report,
)


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="repeat to compare")
    parser.add_argument("--name", action="append", help="a label per checkpoint")
    parser.add_argument("--data", help="dataset folder (default: the one used in training)")
    parser.add_argument("--windows", type=int, default=64, help="val windows to score")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--report", help="JSON report path")
    args = parser.parse_args()
    names = args.name or [storage.name_of(c) for c in args.checkpoint]
    if len(names) != len(args.checkpoint):
        raise RaygptError("give one --name per --checkpoint, or none")
    first, _ = load_model(args.checkpoint[0])
    data = args.data or training_dataset(args.checkpoint[0])
    windows = val_windows(data, first.config.block_size, args.windows)
    reports = [
        evaluate_checkpoint(name, path, windows, args.new_tokens)
        for name, path in zip(names, args.checkpoint, strict=True)
    ]
    print(comparison_table(reports))
    if args.report:
        write_report(args.report, reports)


if __name__ == "__main__":
    run_cli(main)
