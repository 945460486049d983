"""A run's progress as lines a person reads: one per logged step, and its events.

Rank 0 writes each record to the run's metrics.jsonl; the driver follows that file and prints
the lines (`FollowProgress`), so a job's console shows the run's own progress and none of the
workers' log prefixes. With Ray's worker logs shown on the driver (`--verbose`), rank 0
prints the same lines itself instead.
"""

from __future__ import annotations

import threading
from typing import Any

from raygpt.train.expert_load import load_range
from raygpt.train.run_log import read_metrics

POLL_S = 1.0
LAYERS_SHOWN = 4  # a deeper mixture's line shows its most unbalanced layer


def progress_line(record: dict[str, Any], max_iters: int) -> str:
    parts = [f"step {record['step']:>6}/{max_iters}", f"loss {record['loss']:.4f}"]
    if "val_loss" in record:
        parts.append(f"val {record['val_loss']:.4f}")
    parts += [
        f"lr {record['lr']:.2e}",
        f"{record['tokens_per_s']:,.0f} tok/s",
        "mfu n/a" if record["mfu"] is None else f"mfu {record['mfu'] * 100:.1f}%",
        f"{record['ms_per_step']:.0f} ms/step",
    ]
    if record.get("experts"):
        parts.append(expert_part(record))
    return " | ".join(parts)


def expert_part(record: dict[str, Any]) -> str:
    """`balance 1.02 z 0.53 | L0 0.6-1.4x H 2.05 ...`: the router losses, then per sparse
    layer its least and most loaded expert (x a uniform share) and the load's entropy."""
    layers = record["experts"]
    if len(layers) > LAYERS_SHOWN:
        layers = [max(layers, key=lambda layer: load_range(layer)[1])]
    part = f"balance {record['balance_loss']:.2f} z {record['router_z_loss']:.2f} |"
    for layer in layers:
        low, high = load_range(layer)
        part += f" L{layer['layer']} {low:.1f}-{high:.1f}x H {layer['entropy']:.2f}"
    return part


def start_line(val_loss: float, max_iters: int) -> str:
    return f"step      0/{max_iters} | val {val_loss:.4f}"


def record_line(record: dict[str, Any], max_iters: int) -> str | None:
    """The console line for one metrics.jsonl record (None: nothing to say)."""
    if "loss" in record:
        return progress_line(record, max_iters)
    if record.get("step") == 0 and "val_loss" in record:
        return start_line(record["val_loss"], max_iters)
    if record.get("event") == "resumed":
        line = f"resumed from step {record['step']}"
        if "unreadable" in record:
            line += f" (the newer checkpoint {record['unreadable']} is unreadable)"
        return line
    return None


class FollowProgress:
    """Print the new records of a run's metrics.jsonl while training runs (a thread)."""

    def __init__(self, run_dir: str, max_iters: int) -> None:
        self.run_dir, self.max_iters = run_dir, max_iters
        self._seen = len(read_metrics(run_dir))  # a resumed run's earlier lines are history
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="raygpt-progress", daemon=True)

    def __enter__(self) -> FollowProgress:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._done.set()
        self._thread.join()
        self._print_new()  # whatever came after the last poll

    def _follow(self) -> None:
        while not self._done.wait(POLL_S):
            self._print_new()

    def _print_new(self) -> None:
        try:
            records = read_metrics(self.run_dir)
        except Exception:  # a half-written last line, an object store blip: next poll
            return
        for record in records[self._seen :]:
            line = record_line(record, self.max_iters)
            if line is not None:
                print(line, flush=True)
        self._seen = max(self._seen, len(records))
