"""What a sweep leaves in its folder: the trial table, the best trial as a training YAML, a plot.

Everything here reads the trials' own run folders (metrics.jsonl, written by the training loop),
so it needs no Ray and works on a sweep that is still running or was interrupted.

    results.md        the table, best first (the one the sweep prints)
    results.json      the same rows, for tools
    best.yaml         the best trial's full experiment: `python jobs/train.py --config best.yaml`
    sweep.png         the metric against step for every trial; early-stopped ones end in an x
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raygpt.train.run_log import read_metrics
from raygpt.tune.sweep_config import SweepConfig

RUN = "run"  # a trial's Ray Train run (metrics.jsonl, checkpoints), inside its Tune folder
TABLE = "results.md"
ROWS = "results.json"
BEST = "best.yaml"
PLOT = "sweep.png"

# done: trained the whole budget; stopped: ASHA ended it early; error: it failed;
# running, pending: the sweep is live; unfinished: interrupted (or out of time), resumes.
STATUSES = ("done", "stopped", "error", "running", "pending", "unfinished")


@dataclass
class TrialRow:
    trial: str  # the trial's folder in the sweep
    status: str  # one of STATUSES
    params: dict[str, Any]  # its values of the swept keys
    steps: int  # the last step it reported to Tune
    best: float | None  # its best value of the metric over its evaluations (after step 0)
    last: float | None  # the metric at its last evaluation
    run_dir: str  # its Ray Train run: metrics.jsonl, checkpoints, final/
    error: str | None = None


def trial_row(
    trial: str,
    status: str,
    params: dict[str, Any],
    run_dir: Path,
    metric: str,
    mode: str,
    steps: int | None = None,
) -> TrialRow:
    """A trial's row from its run's metrics, up to `steps`: the last step Tune heard of (a run
    stopped early goes on for a moment until its workers are killed; that part does not count).
    """
    if steps is None:
        steps = max((r["step"] for r in read_metrics(run_dir) if "step" in r), default=0)
    trained = [(s, v) for s, v in metric_curve(run_dir, metric, until=steps) if s > 0]
    values = [value for _, value in trained if math.isfinite(value)]
    pick = min if mode == "min" else max
    return TrialRow(
        trial=trial,
        status=status,
        params=params,
        steps=steps,
        best=pick(values) if values else None,
        last=trained[-1][1] if trained else None,
        run_dir=str(run_dir),
    )


def metric_curve(
    run_dir: str | Path, metric: str, until: int | None = None
) -> list[tuple[int, float]]:
    """(step, value) for every logged value of `metric`; a resumed run's rewrite wins."""
    by_step: dict[int, float] = {}
    for record in read_metrics(run_dir):
        step = record.get("step")
        if step is None or (until is not None and step > until):
            continue
        if isinstance(record.get(metric), (int, float)):
            by_step[step] = float(record[metric])
    return sorted(by_step.items())


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Best first; trials without a value yet go last, in trial order."""
    sign = 1 if mode == "min" else -1
    return sorted(rows, key=lambda r: (r.best is None, sign * (r.best or 0.0), r.trial))


def format_table(rows: list[TrialRow], sweep: SweepConfig) -> str:
    """A markdown table (readable in a terminal, pasteable into a README)."""
    keys = list(sweep.space)
    header = ["#", "trial", "status", "steps", f"best {sweep.metric}", f"last {sweep.metric}"]
    lines = [header + keys]
    for rank, row in enumerate(ranked(rows, sweep.mode), 1):
        lines.append(
            [
                str(rank),
                row.trial,
                row.status,
                f"{row.steps}/{sweep.trial_steps(row.params)}",
                _number(row.best),
                _number(row.last),
                *(_value(row.params.get(key)) for key in keys),
            ]
        )
    widths = [max(3, *(len(line[i]) for line in lines)) for i in range(len(header + keys))]
    right = {0, 3, 4, 5}  # numbers line up on the right

    def render(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + (":" if i in right else "-") for i, w in enumerate(widths)]
    return "\n".join([render(lines[0]), render(rule), *(render(cells) for cells in lines[1:])])


def write_results(sweep_dir: Path, rows: list[TrialRow], sweep: SweepConfig) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(sweep_dir / TABLE, format_table(rows, sweep) + "\n")
    data = [dataclasses.asdict(row) for row in ranked(rows, sweep.mode)]
    _atomic_write(sweep_dir / ROWS, json.dumps(data, indent=2) + "\n")


def read_results(sweep_dir: Path) -> list[TrialRow]:
    path = sweep_dir / ROWS
    if not path.is_file():
        return []
    return [TrialRow(**row) for row in json.loads(path.read_text())]


def best_trial(rows: list[TrialRow], mode: str) -> TrialRow | None:
    scored = [r for r in rows if r.best is not None and r.status != "error"]
    return ranked(scored, mode)[0] if scored else None


def write_best_config(sweep: SweepConfig, row: TrialRow) -> Path:
    """The best trial as a full experiment YAML, training into its own folder."""
    experiment = sweep.experiment_dict(row.params)
    out_dir = sweep.out_dir / "best"
    experiment["train"]["out_dir"] = str(out_dir)
    path = sweep.out_dir / BEST
    header = [
        f"# The best trial of the sweep {sweep.source}: {row.trial},",
        f"# {sweep.metric} {_number(row.best)} in {row.steps} steps, with "
        + ", ".join(f"{k}={_value(v)}" for k, v in row.params.items())
        + ".",
        f"#   python jobs/train.py --config {path}",
        "",
    ]
    body = yaml.safe_dump(experiment, sort_keys=False, default_flow_style=False)
    _atomic_write(path, "\n".join(header) + body)
    return path


def plot_sweep(rows: list[TrialRow], sweep: SweepConfig) -> Path | None:
    """The metric against step for every trial, best first in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [
        (row, metric_curve(row.run_dir, sweep.metric, until=row.steps))
        for row in ranked(rows, sweep.mode)
    ]
    curves = [(row, curve) for row, curve in curves if curve]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for row, curve in curves:
        steps, values = zip(*curve, strict=True)
        label = f"{row.trial} ({row.status}): " + ", ".join(
            f"{key.split('.')[1]}={_value(value)}" for key, value in row.params.items()
        )
        (line,) = ax.plot(steps, values, "o-", markersize=3, linewidth=1.3, label=label)
        if row.status == "stopped":
            ax.plot(steps[-1], values[-1], "x", color=line.get_color(), markersize=10, mew=2)
    stopped = sum(row.status == "stopped" for row in rows)
    ax.set_title(
        f"{sweep.out_dir.name}: {len(rows)} trials, {stopped} stopped early (x)"
        if sweep.asha
        else f"{sweep.out_dir.name}: {len(rows)} trials"
    )
    ax.set_xlabel("step")
    ax.set_ylabel(f"{sweep.metric} (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = sweep.out_dir / PLOT
    fig.savefig(path)
    plt.close(fig)
    return path


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def _atomic_write(path: Path, text: str) -> None:
    """Readers (a user, a test) never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
