"""A training run's record: metrics.jsonl (one JSON object per logged step) and a loss-curve PNG,
in the run folder wherever it lives (a path or a URI, see raygpt.storage)."""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from raygpt import storage

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record. A failed write (a blip of the object store) is a warning: the record
    also went to Ray Train and Prometheus, and a log line is not worth a training restart."""
    try:
        storage.append_text(storage.join(run_dir, METRICS_FILE), json.dumps(record) + "\n")
    except storage.StorageError as err:
        logging.getLogger(__name__).warning("metrics.jsonl not updated: %s", err)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    try:
        text = storage.read_text(storage.join(run_dir, METRICS_FILE))
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def plot_losses(run_dir: str | Path, title: str = "") -> str | None:
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
    ax.set_title(title or storage.name_of(run_dir))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    path = storage.join(run_dir, LOSS_PLOT)
    storage.write_bytes(path, image.getvalue())
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
