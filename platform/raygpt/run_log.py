"""A training run's record: metrics.jsonl (one JSON object per logged step) and a loss-curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(run_dir: str | Path, title: str = "") -> Path | None:
    """Train and val loss against step; the last record of a step wins (a resumed run rewrites)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for record in read_metrics(run_dir):
        step = record.get("step")
        if step is None:
            continue
        if _finite(record.get("loss")):
            train[step] = record["loss"]
        if _finite(record.get("val_loss")):
            val[step] = record["val_loss"]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        steps = sorted(train)
        ax.plot(steps, [train[s] for s in steps], label="train", linewidth=1.2)
    if val:
        steps = sorted(val)
        ax.plot(steps, [val[s] for s in steps], "o-", label="val", linewidth=1.5, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / LOSS_PLOT
    fig.savefig(path)
    plt.close(fig)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
