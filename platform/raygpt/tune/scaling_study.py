"""Running a scaling study: its runs through raygpt's sweep, then the fits and the report.

The runs are an IsoFlopSweep (scaling_config.py), so `run_sweep` runs them exactly as it runs
any sweep: one Ray Tune trial per run, each a Ray Train run, as many at once as the cluster
holds, the data prepared once. An interrupted study (Ctrl-C, a lost driver) is resumed by
running the same command again: Tune restores the sweep, finished runs stay finished and only
the rest train. The fits need every run ended, so they wait for a complete sweep; `analyse`
redoes them from the runs on disk (jobs/scaling.py --fit-only) without Ray.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from raygpt.errors import ConfigError
from raygpt.train.run_log import read_metrics
from raygpt.tune.results import TrialRow, read_results
from raygpt.tune.scaling_config import POINT, ScalingStudy
from raygpt.tune.scaling_fit import Run, ScalingFit, fit_scaling
from raygpt.tune.scaling_recommend import Recommendation, recommend
from raygpt.tune.scaling_report import StudyRun, constants_table, runs_table, write_report

ENDED = ("done", "stopped", "error")


@dataclass
class StudyOutcome:
    study: ScalingStudy
    runs: list[StudyRun]
    seconds: float | None = None  # the sweep's wall time (None: analysed from disk)
    resumed: bool = False
    concurrency: int | None = None
    fit: ScalingFit | None = None
    recommendation: Recommendation | None = None
    files: list[Path] = field(default_factory=list)
    problem: str | None = None  # why there is no fit, when the runs are all ended

    @property
    def unfinished(self) -> int:
        return sum(run.status not in ENDED for run in self.runs)

    @property
    def failed(self) -> list[StudyRun]:
        return [run for run in self.runs if run.status in ("error", "stopped")]


def run_study(study: ScalingStudy) -> StudyOutcome:
    """Run (or resume) the study's sweep on the connected Ray cluster, then fit and report."""
    from raygpt.tune.sweep import run_sweep

    sweep = run_sweep(study.sweep)
    outcome = analyse(study, sweep.rows)
    outcome.seconds, outcome.resumed = sweep.seconds, sweep.resumed
    outcome.concurrency = sweep.concurrency
    return outcome


def analyse(study: ScalingStudy, rows: list[TrialRow] | None = None) -> StudyOutcome:
    """Fit and report from the runs' results (read from the study folder if not given)."""
    if rows is None:
        rows = read_results(study.out_dir)
        if not rows:
            raise ConfigError(
                f"{study.source}: {study.out_dir} has no runs yet: run the study first"
            )
    outcome = StudyOutcome(study, study_runs(study, rows))
    if outcome.unfinished:
        return outcome
    finished = [run for run in outcome.runs if run.val_loss is not None]
    try:
        fit = fit_scaling(
            [Run(r.budget, r.params, r.tokens, r.val_loss) for r in finished],
            bootstrap=study.fit.bootstrap,
            seed=study.fit.seed,
        )
    except ValueError as err:
        outcome.problem = f"no fit: {err} ({len(finished)} runs finished)"
        return outcome
    outcome.fit = fit
    outcome.recommendation = recommend(study, fit)
    outcome.files = write_report(study, outcome.runs, fit, outcome.recommendation)
    return outcome


def study_runs(study: ScalingStudy, rows: list[TrialRow]) -> list[StudyRun]:
    """Every run the study asks for, with what its trial reached (pending if not started)."""
    by_label = {row.params.get(POINT): row for row in rows}
    runs = []
    for point in study.points:
        row = by_label.get(point.label)
        done = row is not None and row.status == "done" and row.steps >= point.steps
        runs.append(
            StudyRun(
                label=point.label,
                trial=None if row is None else row.trial,
                status="pending" if row is None else row.status,
                budget=point.budget,
                depth=point.size.depth,
                n_embd=point.size.n_embd,
                n_head=point.size.n_head,
                params=point.size.params,
                flops_per_token=point.size.flops_per_token,
                steps=point.steps,
                tokens=point.tokens,
                flops=point.flops,
                val_loss=row.last if done else None,
                tokens_per_s=None if row is None else _throughput(row.run_dir),
                run_dir=None if row is None else row.run_dir,
            )
        )
    return runs


def summary(outcome: StudyOutcome) -> str:
    study = outcome.study
    ended = len(outcome.runs) - outcome.unfinished
    timing = "" if outcome.seconds is None else f" in {outcome.seconds:.0f} s"
    if outcome.concurrency:
        timing += f", {outcome.concurrency} runs at a time"
    lines = [
        runs_table(outcome.runs),
        "",
        f"{ended} of {len(outcome.runs)} runs ended{timing}"
        + (" (resumed)" if outcome.resumed else ""),
    ]
    lines += [f"  {run.label} {run.status}: {run.run_dir}" for run in outcome.failed]
    if outcome.unfinished:
        lines.append(
            f"{outcome.unfinished} runs unfinished: run the same command again to resume the study"
        )
        return "\n".join(lines)
    if outcome.fit is None:
        lines.append(outcome.problem or "no fit")
        return "\n".join(lines)
    lines += ["", constants_table(outcome.fit), "", outcome.recommendation.line()]
    lines += [f"  {path.name + ':':13} {path}" for path in outcome.files]
    lines.append(f"  {'sweep:':13} {study.out_dir / 'results.md'} (every trial, as Tune ran it)")
    return "\n".join(lines)


def exit_code(outcome: StudyOutcome) -> int:
    """0 with a fit; 130 (as after Ctrl-C) while runs are unfinished; 1 if no fit is possible."""
    if outcome.unfinished:
        return 130
    return 0 if outcome.fit is not None else 1


def _throughput(run_dir: str) -> float | None:
    rates = [r["tokens_per_s"] for r in read_metrics(run_dir) if "tokens_per_s" in r]
    return statistics.median(rates) if rates else None
