"""Tokenization throughput: the Ray Data job on 1 and 2 CPUs vs a single-process tiktoken loop.

The corpus is the stdlib's .py files copied --copies times (each copy marked, so exact
de-duplication keeps them all), large enough that Ray's start-up does not dominate. The
single-process loop reads, decodes and tokenizes the same files (and writes nothing); the
Ray job does all of that plus hashing, splitting and writing the shards. Ray's cluster
start-up is timed apart from the job.

    python bench/bench_tokenize.py              # 3 copies, about 95 MB
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from raygpt.cli import JobParser
from raygpt.data.corpus import KEPT, decode_document, resolve_inputs
from raygpt.tokenizer import get_tokenizer


def build_corpus(root: Path, copies: int) -> list[str]:
    files = resolve_inputs(["stdlib"]).files
    for k in range(copies):
        for i, source in enumerate(files):
            target = root / f"copy{k}" / f"{i:05d}_{Path(source).name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f"# copy {k}\n".encode() + Path(source).read_bytes())
    return sorted(str(p) for p in root.rglob("*.py"))


def single_process(files: list[str], tokenizer_name: str) -> tuple[float, int, int]:
    tokenizer = get_tokenizer(tokenizer_name)
    start = time.perf_counter()
    tokens = size = 0
    for path in files:
        data = Path(path).read_bytes()
        size += len(data)
        text, status = decode_document(data)
        if status == KEPT:
            tokens += len(tokenizer.encode(text)) + 1
    return time.perf_counter() - start, size, tokens


def ray_job(
    corpus: Path, out: Path, cpus: int, tokenizer_name: str
) -> tuple[float, float, int, int]:
    import ray

    from raygpt.data.prepare import PrepareOptions, prepare_dataset
    from raygpt.ray_runtime import init_ray

    start = time.perf_counter()
    init_ray(num_cpus=cpus)
    started = time.perf_counter() - start
    try:
        options = PrepareOptions(
            out_dir=str(out), inputs=[str(corpus)], tokenizer=tokenizer_name, overwrite=True
        )
        start = time.perf_counter()
        result = prepare_dataset(options)
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return started, seconds, result.bytes_read, result.tokens


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    work = Path(tempfile.mkdtemp(prefix="bench_tokenize_"))
    try:
        files = build_corpus(work / "corpus", args.copies)
        rows = []
        seconds, size, tokens = single_process(files, args.tokenizer)
        rows.append(("single-process tiktoken loop", None, seconds, size, tokens))
        for cpus in args.cpus:
            started, seconds, size, tokens = ray_job(
                work / "corpus", work / "out", cpus, args.tokenizer
            )
            rows.append((f"Ray Data job, {cpus} CPU", started, seconds, size, tokens))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = rows[0][2]
    print(
        f"\n{len(files)} files, {rows[0][3] / 1e6:.1f} MB, tokenizer {args.tokenizer}, "
        f"{os.cpu_count()} cores, {platform.machine()}"
    )
    print(
        f"{'method':30} {'ray start s':>11} {'job s':>7} {'MB/s':>7} {'Mtok/s':>7} {'vs loop':>8}"
    )
    for name, started, seconds, size, tokens in rows:
        start_col = f"{started:.1f}" if started is not None else "-"
        print(
            f"{name:30} {start_col:>11} {seconds:7.2f} {size / seconds / 1e6:7.1f} "
            f"{tokens / seconds / 1e6:7.2f} {base / seconds:7.2f}x"
        )


if __name__ == "__main__":
    main()
