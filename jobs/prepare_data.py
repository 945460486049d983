"""Corpus to token shards on Ray Data (locally, or on a cluster with `ray job submit`).

python jobs/prepare_data.py --out data/stdlib                      # the embedded stdlib corpus
python jobs/prepare_data.py --input ~/src --include '*.py' --exclude '*/tests/*' --out data/code
python jobs/prepare_data.py --input corpus.jsonl --text-column content --out data/corpus
python jobs/prepare_data.py --import-llmc 'fineweb10B/fineweb_*.bin' --out data/fineweb
python jobs/prepare_data.py --import-nanogpt nanoGPT/data/openwebtext --out data/owt
"""

from __future__ import annotations

from raygpt.cli import JobParser, add_ray_arguments, run_cli
from raygpt.data.corpus import HIDDEN, OUTSIDE
from raygpt.data.import_tokens import import_llmc, import_nanogpt
from raygpt.data.prepare import PrepareOptions, PrepareResult, plan_inputs, prepare_dataset
from raygpt.data.shards import Manifest
from raygpt.ray_runtime import init_ray


def summary(manifest: Manifest, out: str, seconds: float | None, bytes_read: int | None) -> str:
    lines = [f"wrote {out}/manifest.json ({manifest.tokenizer}, vocab {manifest.vocab_size})"]
    for name, split in manifest.splits.items():
        lines.append(
            f"  {name:5}: {split.documents:>9,} documents {split.tokens:>13,} tokens "
            f"in {len(split.shards)} shard(s)"
        )
    listing = {r: n for r, n in manifest.skipped.items() if r in (HIDDEN, OUTSIDE)}
    read = {r: n for r, n in manifest.skipped.items() if r not in listing}
    if read:
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in read.items())
        lines.append(f"  skipped: {reasons} (of {manifest.files_read:,} read)")
    if listing:
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in listing.items())
        lines.append(f"  left out: {reasons} (--include-hidden, --follow-symlinks take them)")
    if seconds:
        tokens = sum(s.tokens for s in manifest.splits.values())
        rate = f"{tokens / seconds:,.0f} tokens/s"
        if bytes_read:
            rate += f", {bytes_read / seconds / 1e6:.1f} MB/s"
        lines.append(f"  time: {seconds:.1f} s ({rate})")
    return "\n".join(lines)


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset folder to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--input", action="append", help="file, folder, glob, JSONL/Parquet, or 'stdlib' (default)"
    )
    source.add_argument("--import-llmc", metavar="GLOB", help="llm.c / modded-nanogpt .bin shards")
    source.add_argument("--import-nanogpt", metavar="DIR", help="folder with train.bin and val.bin")
    parser.add_argument("--include", action="append", help="file pattern to keep, e.g. '*.py'")
    parser.add_argument("--exclude", action="append", help="file pattern to drop")
    parser.add_argument(
        "--include-hidden", action="store_true", help="read dotfiles too (.env, ...: secrets)"
    )
    parser.add_argument(
        "--follow-symlinks", action="store_true", help="follow symlinks out of input folders"
    )
    parser.add_argument("--text-column", default="text", help="for JSONL / Parquet inputs")
    parser.add_argument(
        "--tokenizer",
        default="gpt2",
        help="gpt2, byte, or a model's own: a tokenizer.json or a checkpoint folder holding one",
    )
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--min-chars", type=int, default=1)
    parser.add_argument("--max-chars", type=int, default=None)
    parser.add_argument("--shard-tokens", type=int, default=1 << 24)
    parser.add_argument("--tokenizer-actors", type=int, help="default: one per cluster CPU")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_ray_arguments(parser)
    args = parser.parse_args()

    if args.import_llmc or args.import_nanogpt:
        importer = import_llmc if args.import_llmc else import_nanogpt
        manifest = importer(
            args.import_llmc or args.import_nanogpt,
            args.out,
            tokenizer=args.tokenizer,
            shard_tokens=args.shard_tokens,
            overwrite=args.overwrite,
        )
        print(summary(manifest, args.out, None, None))
        return
    options = PrepareOptions(
        out_dir=args.out,
        inputs=args.input or ["stdlib"],
        tokenizer=args.tokenizer,
        include=args.include,
        exclude=args.exclude,
        text_column=args.text_column,
        val_fraction=args.val_fraction,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        shard_tokens=args.shard_tokens,
        tokenizer_actors=args.tokenizer_actors,
        overwrite=args.overwrite,
        include_hidden=args.include_hidden,
        follow_symlinks=args.follow_symlinks,
    )
    inputs = plan_inputs(options)  # bad options or paths fail before Ray starts
    init_ray(args.address, args.num_cpus, args.verbose)
    result: PrepareResult = prepare_dataset(options, inputs)
    print(summary(result.manifest, args.out, result.seconds, result.bytes_read))


if __name__ == "__main__":
    run_cli(main)
