"""What trials report, and to whom: evaluations to Tune, finished trials to the sweep folder.

Ray Train V2 runs apart from Tune: TuneReportCallback, in the trainer's RunConfig, hands each
`ray.train.report` to the Tune trial that launched the run. The loop also reports steps without
an evaluation; those would reach Tune without `val_loss`, which Tune rejects (and ASHA could not
use them), so MetricReportCallback passes on only the reports that carry the metric.

ResultsCallback runs in the Tune driver: each time a trial ends it records how (done, stopped
early, failed) in trial_events.jsonl and rewrites the results table, so the sweep folder always
says where the sweep stands, and a resumed sweep still knows how its earlier trials ended.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from raygpt.tune.results import RUN, trial_row, write_results
from raygpt.tune.sweep_config import SweepConfig

EVENTS = "trial_events.jsonl"


class MetricReportCallback(TuneReportCallback):
    """TuneReportCallback for the reports that include `metric` (every evaluation)."""

    def __init__(self, metric: str):
        super().__init__()  # must run inside a Tune trial
        self.metric = metric

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


class ResultsCallback(Callback):
    """Keeps results.md / results.json in the sweep folder current as trials end."""

    def __init__(self, sweep: SweepConfig):
        self.sweep = sweep

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        done = reported_step(trial) >= self.sweep.trial_steps(trial.config)
        status = "done" if done else "stopped"
        self._record(trial, {"status": status})
        self._write(trials)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._record(trial, {"status": "error", "error": _last_line(trial.error_file)})
        self._write(trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._write(trials)

    def _record(self, trial, event: dict[str, Any]) -> None:
        with open(Path(trial.path).parent / EVENTS, "a") as f:
            f.write(json.dumps({"trial": trial_name(trial), **event}) + "\n")

    def _write(self, trials: list) -> None:
        started = [path for path in map(trial_path, trials) if path is not None]
        if not started:
            return
        sweep_dir = started[0].parent
        events = read_events(sweep_dir)
        rows = []
        for trial in trials:
            name = trial_name(trial)
            event = events.get(name, {})
            status = event.get("status") or _live_status(trial.status)
            params = {key: trial.config.get(key) for key in self.sweep.space}
            run_dir = sweep_dir / name / RUN  # the trial's folder is named after it
            row = trial_row(
                name,
                status,
                params,
                run_dir,
                self.sweep.metric,
                self.sweep.mode,
                steps=reported_step(trial),
            )
            row.error = event.get("error")
            rows.append(row)
        write_results(sweep_dir, rows, self.sweep)


def trial_name(trial) -> str:
    """`trial_00003`: the trial's folder and its name in the table."""
    return f"trial_{trial.trial_id.rsplit('_', 1)[-1]}"


def reported_step(trial) -> int:
    """The last step the trial reported to Tune (ASHA's clock)."""
    return int((trial.last_result or {}).get("step", 0))


def trial_path(trial) -> Path | None:
    """The trial's folder; None until Tune names it (when the trial first starts)."""
    try:
        return Path(trial.path)
    except RuntimeError:
        return None


def read_events(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Each trial's last recorded end (a restarted trial ends again)."""
    path = sweep_dir / EVENTS
    if not path.is_file():
        return {}
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {event["trial"]: event for event in events}


def _live_status(tune_status: str) -> str:
    # A trial Tune stopped without ending it (the sweep was interrupted) resumes on re-run.
    return {"RUNNING": "running", "PENDING": "pending"}.get(tune_status, "unfinished")


def _last_line(error_file: str | None) -> str | None:
    if not error_file or not Path(error_file).is_file():
        return None
    lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None
