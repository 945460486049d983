"""Training numbers on Ray's metrics endpoint (Prometheus), so the dashboard can chart them.

Names are exported with Ray's `ray_` prefix: ray_raygpt_train_loss, ray_raygpt_train_mfu, ...
"""

from __future__ import annotations

from typing import Any

GAUGES = {
    "loss": "training loss (mean over the step's micro-batches on every worker)",
    "val_loss": "validation loss",
    "lr": "learning rate",
    "tokens_per_s": "training throughput, all workers",
    "mfu": "model FLOPs utilization (0-1), GPU only",
    "ms_per_step": "wall time per optimizer step",
}


class TrainMetrics:
    """Gauges per run (tagged with the run name) plus a counter of tokens trained on."""

    def __init__(self, run: str, tokens_seen: int = 0) -> None:
        from ray.util.metrics import Counter, Gauge

        self.tags = {"run": run}
        self.gauges = {
            key: Gauge(f"raygpt_train_{key}", description=text, tag_keys=("run",))
            for key, text in GAUGES.items()
        }
        self.tokens = Counter(
            "raygpt_train_tokens", description="tokens trained on", tag_keys=("run",)
        )
        self._tokens_seen = tokens_seen

    def publish(self, record: dict[str, Any]) -> None:
        for key, gauge in self.gauges.items():
            if record.get(key) is not None:
                gauge.set(float(record[key]), tags=self.tags)
        seen = record.get("tokens_seen")
        if seen is not None and seen > self._tokens_seen:
            self.tokens.inc(seen - self._tokens_seen, tags=self.tags)
            self._tokens_seen = seen
