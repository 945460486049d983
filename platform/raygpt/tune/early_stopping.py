"""ASHA early stopping that survives a resumed sweep.

ASHA (asynchronous successive halving) keeps rungs at grace_period x rf^k steps; a trial that
reaches a rung behind the best 1/rf of the trials already recorded there is stopped. Tune saves
no scheduler state with the experiment, so a restored sweep would start with empty rungs and
judge the remaining trials against nothing. Each trial's evaluations are in its own run's
metrics.jsonl, so when Tune adds a restored trial, its evaluations are replayed into the rungs.
"""

from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler

from raygpt.tune.report import trial_path
from raygpt.tune.results import RUN, metric_curve


class ResumableASHA(AsyncHyperBandScheduler):
    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        path = trial_path(trial)  # None for a new trial: nothing to replay
        if path is None:
            return
        bracket = self._trial_info[trial.trial_id]
        for step, value in metric_curve(path / RUN, self._metric):
            # Record only: the decisions were taken (or are still to come) in the live sweep.
            bracket.on_result(trial, step, self._metric_op * value)
