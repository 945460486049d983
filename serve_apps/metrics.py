"""The generator's own metrics, exported through Ray's Prometheus endpoint (prefixed `ray_`)
next to Serve's request counts and latencies."""

from __future__ import annotations

import threading

from ray.util import metrics

from raygpt.inference.engine import EngineStats

# Time to first token spans queueing and prefill: from a few ms to many seconds under load.
TTFT_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


class ServingMetrics:
    def __init__(self, model_name: str) -> None:
        tags = {"model": model_name}
        self.tokens = metrics.Counter(
            "raygpt_serve_tokens_generated",
            description="Completion tokens generated.",
            tag_keys=("model",),
        )
        self.time_to_first_token = metrics.Histogram(
            "raygpt_serve_time_to_first_token_seconds",
            description="From a request reaching the generator to its first token.",
            boundaries=TTFT_BOUNDARIES,
            tag_keys=("model",),
        )
        self.slots_active = metrics.Gauge(
            "raygpt_serve_slots_active",
            description="KV-cache slots decoding a request.",
            tag_keys=("model",),
        )
        self.slot_occupancy = metrics.Gauge(
            "raygpt_serve_slot_occupancy",
            description="Active slots / slots of the replica (0..1).",
            tag_keys=("model",),
        )
        self.requests_queued = metrics.Gauge(
            "raygpt_serve_requests_queued",
            description="Requests waiting for a free slot.",
            tag_keys=("model",),
        )
        # Speculative decoding: accepted / proposed is the acceptance rate (a Grafana ratio
        # of the two rates).
        self.tokens_proposed = metrics.Counter(
            "raygpt_serve_speculated_tokens_proposed",
            description="Speculated tokens the model verified.",
            tag_keys=("model",),
        )
        self.tokens_accepted = metrics.Counter(
            "raygpt_serve_speculated_tokens_accepted",
            description="Speculated tokens the model verified and kept.",
            tag_keys=("model",),
        )
        for metric in (
            self.tokens,
            self.time_to_first_token,
            self.slots_active,
            self.slot_occupancy,
            self.requests_queued,
            self.tokens_proposed,
            self.tokens_accepted,
        ):
            metric.set_default_tags(tags)
        self._counted = (0, 0)  # the engine's proposed and accepted totals, as last exported

    def record_engine(self, stats: EngineStats) -> None:
        self.slots_active.set(stats.active)
        self.slot_occupancy.set(stats.active / stats.max_slots)
        self.requests_queued.set(stats.queued)
        proposed, accepted = self._counted
        if stats.tokens_proposed > proposed:  # Ray's counters take only increments > 0
            self.tokens_proposed.inc(stats.tokens_proposed - proposed)
        if stats.tokens_accepted > accepted:
            self.tokens_accepted.inc(stats.tokens_accepted - accepted)
        self._counted = (stats.tokens_proposed, stats.tokens_accepted)

    def watch(self, read_stats, period_s: float = 1.0) -> threading.Event:
        """Sample the engine's gauges every period on a daemon thread; set the event to stop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(period_s):
                self.record_engine(read_stats())

        threading.Thread(target=loop, name="raygpt-serve-metrics", daemon=True).start()
        return stop


class IngressMetrics:
    """What the ingress refuses at once because the service is full (answered 429)."""

    def __init__(self, model_name: str) -> None:
        self.rejected = metrics.Counter(
            "raygpt_serve_requests_rejected",
            description="Requests answered 429: the generators' queues were full.",
            tag_keys=("model",),
        )
        self.rejected.set_default_tags({"model": model_name})
