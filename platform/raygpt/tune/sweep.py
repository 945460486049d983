"""Running a sweep: a Ray Tune Tuner whose trials each launch one Ray Train run.

The Ray Train V2 pattern: a Tune trial is a small function (`run_trial`) that builds its
experiment config and starts a TorchTrainer with MetricReportCallback, so every evaluation
reaches Tune and ASHA can stop the trial early. The trial holds `resources.trial_cpus`; its
Train workers hold their own CPUs (outside Tune's accounting), so the number of trials at once
is decided here from the cluster: its free CPUs less `reserve_cpus` (for Ray Data), divided by
trial_cpus + num_workers x cpus_per_worker.

The sweep folder (`out_dir`) holds Tune's experiment state, one folder per trial (with its Train
run in `run/`), and the results. Running the same sweep again resumes it (Tuner.restore):
finished trials stay finished, interrupted ones restart and their Train runs resume from their
last checkpoints. A different sweep in the same folder is refused.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raygpt import storage
from raygpt.config import experiment_from_dict
from raygpt.errors import ConfigError
from raygpt.train.run_log import read_metrics
from raygpt.tune.results import (
    TABLE,
    TrialRow,
    best_trial,
    format_table,
    plot_sweep,
    read_results,
    write_best_config,
)
from raygpt.tune.sweep_config import SweepConfig, trial_cpus

STATE = "sweep.json"  # the sweep this folder holds: a resume must match it
ENDED = ("done", "stopped", "error")
SPECIAL_INIT = ("scratch", "resume")


@dataclass
class SweepOutcome:
    sweep: SweepConfig
    rows: list[TrialRow]
    concurrency: int
    resumed: bool
    seconds: float
    best: TrialRow | None = None
    best_config: Path | None = None
    plot: Path | None = None

    @property
    def unfinished(self) -> int:
        """Trials still to run: interrupted ones, and those not started yet."""
        ended = sum(row.status in ENDED for row in self.rows)
        return total_trials(self.sweep) - ended

    @property
    def complete(self) -> bool:
        return self.unfinished == 0


def check_resume(sweep: SweepConfig) -> bool:
    """True if the sweep folder holds this sweep already (to resume); refuses another sweep."""
    path = sweep.out_dir / STATE
    if not path.is_file():
        return False
    before = json.loads(path.read_text())
    now = json.loads(json.dumps(sweep.to_dict()))  # the same JSON round trip
    if before != now:
        changed = [key for key in now if before.get(key) != now[key]]
        raise ConfigError(
            f"{sweep.source}: {sweep.out_dir} holds a different sweep (changed: "
            f"{', '.join(changed)}); set out_dir to a new folder, or restore the old settings "
            "to resume it"
        )
    return True


def run_sweep(sweep: SweepConfig) -> SweepOutcome:
    """Run (or resume) the sweep on the connected Ray cluster."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from raygpt.train.launch import ensure_data, plan_training
    from raygpt.tune.early_stopping import ResumableASHA
    from raygpt.tune.report import ResultsCallback

    resumed = check_resume(sweep)
    sweep_dir = sweep.out_dir.resolve()
    # The dataset is prepared once, here, not by every trial at once; trials get absolute
    # paths because Tune runs each in its own working directory.
    plan = plan_training(sweep.experiment_config({}, sweep_dir / ".check"))
    ensure_data(plan)
    paths = {"data.dataset": storage.absolute(plan.data_dir)}
    init_from = sweep.base["train"]["init_from"]
    if init_from not in SPECIAL_INIT:
        paths["train.init_from"] = storage.absolute(init_from)

    concurrency = trial_concurrency(sweep)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, paths=paths),
        {"CPU": sweep.resources.trial_cpus},
    )
    start = time.perf_counter()
    if resumed and tune.Tuner.can_restore(str(sweep_dir)):
        print(f"resuming the sweep in {sweep_dir} ({concurrency} trials at a time)", flush=True)
        tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True)
    else:
        print(
            f"sweep: {total_trials(sweep)} trials of {sweep.steps_text} over "
            f"{', '.join(sweep.space)}, {concurrency} at a time, in {sweep_dir}",
            flush=True,
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / STATE).write_text(json.dumps(sweep.to_dict(), indent=2) + "\n")
        scheduler = None
        if sweep.asha is not None:
            scheduler = ResumableASHA(
                time_attr="step",  # steps, not reports: a resumed trial keeps its count
                max_t=sweep.steps,
                grace_period=sweep.asha.grace_period,
                reduction_factor=sweep.asha.reduction_factor,
            )
        tuner = tune.Tuner(
            trainable,
            param_space={key: dist.to_tune() for key, dist in sweep.space.items()},
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                num_samples=sweep.num_samples,
                scheduler=scheduler,
                search_alg=BasicVariantGenerator(
                    max_concurrent=concurrency, random_state=sweep.seed
                ),
                time_budget_s=sweep.budget.time_s,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=sweep_dir.name,
                storage_path=str(sweep_dir.parent),
                callbacks=[ResultsCallback(sweep)],
                verbose=1,
            ),
        )
    tuner.fit()  # trial failures are in the table, not raised
    seconds = time.perf_counter() - start

    rows = read_results(sweep_dir)
    outcome = SweepOutcome(sweep, rows, concurrency, resumed, seconds)
    outcome.best = best_trial(rows, sweep.mode)
    if outcome.best is not None:
        outcome.best_config = write_best_config(sweep, outcome.best)
    outcome.plot = plot_sweep(rows, sweep)
    return outcome


def run_trial(params: dict[str, Any], sweep: SweepConfig, paths: dict[str, str]) -> None:
    """One Tune trial: this trial's experiment, trained by Ray Train, evaluations to Tune."""
    from ray import tune

    from raygpt.train.launch import plan_training, run_training
    from raygpt.tune.report import MetricReportCallback
    from raygpt.tune.results import RUN

    trial_dir = Path(tune.get_context().get_trial_dir())
    raw = sweep.experiment_dict(params)
    for key, value in paths.items():
        section, name = key.split(".")
        raw[section][name] = value
    raw["train"]["out_dir"] = str(trial_dir / RUN)  # an interrupted trial resumes from here
    config = experiment_from_dict(raw, source=f"{sweep.source} ({trial_dir.name})")
    finished = finished_record(trial_dir / RUN, sweep.metric, config.train.max_iters)
    if finished is not None:
        # Its run ended just as the sweep was interrupted: Tune may have missed the last
        # report, and a resumed Train run has nothing left to train (so reports nothing).
        tune.report(finished)
        return
    run_training(plan_training(config), callbacks=[MetricReportCallback(sweep.metric)])


def finished_record(run_dir: Path, metric: str, max_iters: int) -> dict[str, Any] | None:
    """The final evaluation of a run that already trained to its end (its final/ written)."""
    if not (run_dir / "final").is_dir():
        return None
    records = [r for r in read_metrics(run_dir) if r.get("step") == max_iters and metric in r]
    return records[-1] if records else None


def trial_concurrency(sweep: SweepConfig) -> int:
    """Trials at once: what the cluster's free CPUs (and GPUs) hold, beside the reserve for data."""
    import ray

    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0))
    need = trial_cpus(sweep)
    usable = cpus - sweep.resources.reserve_cpus
    if need > usable:
        raise ConfigError(
            f"{sweep.source}: a trial needs {need:g} CPUs (resources.trial_cpus + num_workers "
            f"x cpus_per_worker) but the cluster has {cpus:g}, {sweep.resources.reserve_cpus:g} "
            "of them kept for Ray Data (resources.reserve_cpus)"
        )
    # CPUs other work holds now (a Serve app, another sweep) are not ours to plan with.
    free = min(usable, float(ray.available_resources().get("CPU", 0)))
    fits = max(1, int(free // need)) if need > 0 else math.inf
    scaling = sweep.base["scaling"]
    if scaling["use_gpu"]:
        gpus = float(resources.get("GPU", 0))
        fits = min(fits, int(gpus // (scaling["num_workers"] * scaling["gpus_per_worker"])))
        if fits < 1:
            raise ConfigError(
                f"{sweep.source}: a trial needs more GPUs than the cluster's {gpus:g}"
            )
    limit = sweep.resources.max_concurrent_trials
    return int(max(1, min(fits, limit or fits, total_trials(sweep))))


def total_trials(sweep: SweepConfig) -> int:
    grids = [len(dist.values) for dist in sweep.space.values() if dist.kind == "grid"]
    return sweep.num_samples * math.prod(grids)


def summary(outcome: SweepOutcome) -> str:
    sweep, rows = outcome.sweep, outcome.rows
    counts = {status: sum(r.status == status for r in rows) for status in ENDED}
    lines = [
        format_table(rows, sweep),
        "",
        f"{sum(counts.values())} of {total_trials(sweep)} trials ended: {counts['done']} done, "
        f"{counts['stopped']} stopped early, {counts['error']} failed; "
        f"{outcome.seconds:.0f} s, {outcome.concurrency} trials at a time"
        + (" (resumed)" if outcome.resumed else ""),
    ]
    lines += [f"  {row.trial} failed: {row.error}" for row in rows if row.error]
    if outcome.best is not None:
        so_far = "" if outcome.complete else " so far"
        lines.append(f"best{so_far}: {outcome.best.trial}, {sweep.metric} {outcome.best.best:.4f}")
    lines += [
        f"  table:       {sweep.out_dir / TABLE}",
        f"  best config: {outcome.best_config}",
        f"  plot:        {outcome.plot}",
    ]
    if not outcome.complete:
        lines.append(
            f"{outcome.unfinished} trials unfinished: run the same command again to resume the sweep"
        )
    elif outcome.best_config is not None:
        lines.append(f"next: python jobs/train.py --config {outcome.best_config}")
    return "\n".join(lines)


def exit_code(outcome: SweepOutcome) -> int:
    """0 when the sweep ended with a trial to show for it; 130 (as after Ctrl-C) if unfinished."""
    if not outcome.complete:
        return 130
    return 0 if outcome.best is not None else 1


def _trial_name(trial) -> str:
    from raygpt.tune.report import trial_name

    return trial_name(trial)
