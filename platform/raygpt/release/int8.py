"""From a trained checkpoint to an INT8 one that is fit to serve: quantize, write, and check
it against the original on the same val windows (jobs/quantize.py, jobs/pipeline.py).
Either end may be a URI (s3://...): the INT8 folder is staged locally and uploaded whole."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
from pathlib import Path

from raygpt import storage
from raygpt.checkpoint import META_FILE, load_model, save_checkpoint
from raygpt.data.shards import val_windows
from raygpt.errors import CheckpointError, RaygptError
from raygpt.model.int8 import WEIGHT_ONLY, quantize_model
from raygpt.release.evaluation import (
    EvalReport,
    comparison_table,
    evaluate_checkpoint,
    relative_change,
    training_dataset,
    write_report,
)

REPORT = "eval_report.json"


def release_int8(
    checkpoint: str | Path,
    out: str | Path,
    method: str = WEIGHT_ONLY,
    data: str | Path | None = None,
    windows: int = 64,
    max_loss_increase: float = 0.01,
    overwrite: bool = False,
) -> list[EvalReport]:
    """Write the INT8 checkpoint to `out` with eval_report.json; the reports of original and
    INT8. Raises RaygptError when the INT8 val loss is more than max_loss_increase above."""
    model, meta = load_model(checkpoint)
    if meta.extra.get("quantization"):
        raise CheckpointError(f"{checkpoint} is already INT8: quantize the original checkpoint")
    data = str(data) if data else training_dataset(checkpoint)
    val = val_windows(data, model.config.block_size, windows)  # checked before the work
    source, target = storage.absolute(checkpoint), storage.absolute(out)
    if target == source or target.startswith(source.rstrip("/") + "/"):
        raise RaygptError(f"--out {out} must be outside the original checkpoint")
    storage.prepare_output(out, overwrite)

    quantized = quantize_model(model, method)
    info = {
        "method": method,
        "scheme": "int8 weights, symmetric, one scale per output channel; float activations",
        "library": f"torchao {importlib.metadata.version('torchao')}",
        "quantized_from": str(checkpoint),
    }
    int8_meta = dataclasses.replace(meta, extra={**meta.extra, "quantization": info})
    with storage.writing_dir(out, last=META_FILE) as written:
        save_checkpoint(written, quantized, int8_meta)
        reports = [
            evaluate_checkpoint("original", str(checkpoint), val),
            dataclasses.replace(
                evaluate_checkpoint("int8", str(written), val), checkpoint=str(out)
            ),
        ]
        write_report(written / REPORT, reports)
    losses = (reports[0].val_loss, reports[1].val_loss)
    if not all(map(math.isfinite, losses)):  # NaN compares as "not above any limit": check it
        raise RaygptError(
            f"{comparison_table(reports)}\n"
            f"val loss is not a finite number (original {losses[0]}, INT8 {losses[1]}): "
            f"do not serve {out}"
        )
    increase = relative_change(*losses)
    if increase > max_loss_increase:
        raise RaygptError(
            f"{comparison_table(reports)}\n"
            f"INT8 val loss {reports[1].val_loss:.4f} is {increase:.2%} above the original's "
            f"{reports[0].val_loss:.4f} (limit {max_loss_increase:.0%}): do not serve {out}"
        )
    return reports
