"""Measuring a checkpoint: val loss, perplexity and bits per byte, size on disk, peak memory,
decode speed.

Every model compared in one report sees the same val windows (the first ones of the val
split, read straight from the shards) and decodes the same prompt, so the rows compare.
Bits per byte divide the same cross-entropy by the bytes the predicted tokens spell instead
of by their number, so models with different tokenizers (bytes, GPT-2's BPE, SmolLM2's)
compare on the same text; special tokens (end-of-text) count neither loss nor bytes.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raygpt import storage
from raygpt.checkpoint import read_meta
from raygpt.data.shards import dataset_dir
from raygpt.errors import RaygptError
from raygpt.inference.engine import GenerationEngine, GenerationRequest, GenerationUpdate
from raygpt.inference.load import checkpoint_tokenizer, load_for_inference


@dataclass
class EvalReport:
    name: str
    checkpoint: str
    quantization: str | None
    size_mb: float
    val_loss: float
    perplexity: float
    bits_per_byte: float
    peak_memory_mb: float | None
    decode_tokens_per_s: dict[str, float]  # "batch 1", "batch 8"


def training_dataset(checkpoint: str) -> str:
    """The dataset a raygpt checkpoint was trained on, from its metadata."""
    try:
        experiment = read_meta(checkpoint).train or {}
        return dataset_dir(experiment["data"]["dataset"], experiment["data"]["tokenizer"])
    except (KeyError, TypeError, RaygptError):
        raise RaygptError(f"{checkpoint} does not record its dataset: pass --data") from None


def token_byte_lengths(tokenizer, vocab_size: int) -> np.ndarray:
    """Bytes each token id spells; 0 for special tokens (they stand for no text)."""
    special = {tokenizer.eot_token, *tokenizer.stop_tokens}
    special.update(getattr(tokenizer, "special", {}).values())
    lengths = np.zeros(vocab_size, dtype=np.int64)  # a padded vocabulary's extra rows spell none
    for token in range(min(vocab_size, tokenizer.vocab_size)):
        if token not in special:
            lengths[token] = len(tokenizer.decode_bytes([token]))
    return lengths


@torch.no_grad()
def loss_and_bits_per_byte(
    model, windows: np.ndarray, byte_lengths: np.ndarray, batch_size: int = 8
) -> tuple[float, float]:
    """Mean cross-entropy per token (nats), and in bits per byte of the predicted tokens
    (nanochat's bpb), from one pass over the windows."""
    nats = counted_nats = 0.0
    tokens_seen = total_bytes = 0
    for start in range(0, len(windows), batch_size):
        tokens = torch.from_numpy(windows[start : start + batch_size].astype(np.int64))
        logits, _ = model(tokens[:, :-1])
        targets = tokens[:, 1:].reshape(-1)
        losses = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets, reduction="none"
        )
        spelled = torch.from_numpy(byte_lengths)[targets]
        nats += float(losses.sum())
        tokens_seen += targets.numel()
        counted_nats += float((losses * (spelled > 0)).sum())
        total_bytes += int(spelled.sum())
    bpb = counted_nats / (math.log(2) * total_bytes) if total_bytes else math.nan
    return nats / tokens_seen, bpb


@torch.no_grad()
def mean_loss(model, windows: np.ndarray, batch_size: int = 8) -> float:
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        tokens = torch.from_numpy(windows[start : start + batch_size].astype(np.int64))
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        total += float(loss) * len(tokens)
        count += len(tokens)
    return total / count


def decode_rate(
    model, tokenizer, batch: int, new_tokens: int, repeats: int = 3, compiled: bool = True
) -> float:
    """Greedy decode tokens/s of `batch` requests decoded together by the generation engine,
    as the service runs them (compiled decode steps by default); warm-up and compilation
    excluded. Each request has its own 16-token prompt, all ending together."""
    vocab = model.config.vocab_size
    engine = GenerationEngine(model, tokenizer, max_slots=batch, compile_decode=compiled)
    prompts = torch.randint(0, vocab, (batch, 16), generator=torch.Generator().manual_seed(0))

    def run(tokens: int) -> float:
        finished: list[GenerationUpdate] = []
        for prompt in prompts.tolist():
            request = GenerationRequest(tuple(prompt), tokens, temperature=0, stop_at_eot=False)
            engine.submit(request, lambda u: u.finish_reason and finished.append(u))
        start = time.perf_counter()
        while len(finished) < batch:
            engine.step()
        return time.perf_counter() - start

    run(1), run(4)  # warm-up: compiles the batch of one's step, then this batch's
    seconds = statistics.median(run(new_tokens) for _ in range(repeats))
    return batch * new_tokens / seconds


def folder_size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def peak_memory_mb(checkpoint: str, new_tokens: int = 32) -> float | None:
    """Peak resident memory of a fresh process that loads the checkpoint and decodes."""
    result = subprocess.run(
        [sys.executable, "-m", "raygpt.release.memory_probe", checkpoint, str(new_tokens)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def evaluate_checkpoint(
    name: str,
    checkpoint: str,
    windows: np.ndarray,
    new_tokens: int = 64,
    batches: tuple[int, ...] = (1, 8),
    memory: bool = True,
) -> EvalReport:
    local = storage.local_copy(checkpoint)  # a URI is downloaded once, then measured locally
    model, meta = load_for_inference(local)  # as it is served
    quantization = (meta.extra.get("quantization") or {}).get("method")
    tokenizer = checkpoint_tokenizer(meta)
    byte_lengths = token_byte_lengths(tokenizer, model.config.padded_vocab_size)
    loss, bpb = loss_and_bits_per_byte(model, windows, byte_lengths)
    rates = {f"batch {b}": decode_rate(model, tokenizer, b, new_tokens) for b in batches}
    return EvalReport(
        name=name,
        checkpoint=str(checkpoint),
        quantization=quantization,
        size_mb=folder_size_mb(local),
        val_loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=bpb,
        peak_memory_mb=peak_memory_mb(str(local)) if memory else None,
        decode_tokens_per_s=rates,
    )


def comparison_table(reports: list[EvalReport]) -> str:
    batches = list(reports[0].decode_tokens_per_s)
    head = f"{'model':10} {'size MB':>9} {'val loss':>9} {'ppl':>8} {'bits/byte':>9} {'peak MB':>8}"
    head += "".join(f" {'tok/s b' + b.removeprefix('batch '):>9}" for b in batches)
    lines = [head]
    for r in reports:
        peak = "n/a" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
        line = (
            f"{r.name:10} {r.size_mb:9.2f} {r.val_loss:9.4f} {r.perplexity:8.2f} "
            f"{r.bits_per_byte:9.4f} {peak:>8}"
        )
        line += "".join(f" {r.decode_tokens_per_s[b]:9.1f}" for b in batches)
        lines.append(line)
    if len(reports) == 2:
        base, other = reports
        lines.append(
            f"{other.name} vs {base.name}: val loss {relative_change(base.val_loss, other.val_loss):+.3%}, "
            f"{base.size_mb / other.size_mb:.2f}x smaller, decode "
            + ", ".join(
                f"{b} {other.decode_tokens_per_s[b] / base.decode_tokens_per_s[b]:.2f}x"
                for b in batches
            )
        )
    return "\n".join(lines)


def relative_change(base: float, other: float) -> float:
    return (other - base) / base


def write_report(path: str | Path, reports: list[EvalReport]) -> None:
    storage.write_text(path, json.dumps([asdict(r) for r in reports], indent=2) + "\n")
