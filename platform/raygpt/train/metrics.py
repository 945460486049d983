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
    "balance_loss": "mixture of experts: Switch load-balancing loss, mean over layers (1 = even)",
    "router_z_loss": "mixture of experts: router z-loss, mean over layers",
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
        self.expert_load = Gauge(
            "raygpt_train_expert_load",
            description="mixture of experts: fraction of a layer's routed tokens per expert",
            tag_keys=("run", "layer", "expert"),
        )
        self.expert_entropy = Gauge(
            "raygpt_train_expert_entropy",
            description="mixture of experts: entropy of a layer's expert load (log n_expert: even)",
            tag_keys=("run", "layer"),
        )
        self._tokens_seen = tokens_seen

    def publish(self, record: dict[str, Any]) -> None:
        for key, gauge in self.gauges.items():
            if record.get(key) is not None:
                gauge.set(float(record[key]), tags=self.tags)
        for layer in record.get("experts", []):
            tags = {**self.tags, "layer": str(layer["layer"])}
            self.expert_entropy.set(layer["entropy"], tags=tags)
            for expert, fraction in enumerate(layer["load"]):
                self.expert_load.set(fraction, tags={**tags, "expert": str(expert)})
        seen = record.get("tokens_seen")
        if seen is not None and seen > self._tokens_seen:
            self.tokens.inc(seen - self._tokens_seen, tags=self.tags)
            self._tokens_seen = seen
