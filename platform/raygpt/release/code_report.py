"""HumanEval results for people: one table for every model in a run, the JSON file with
every completion and its outcome, and a bar chart when several models are compared."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from raygpt import storage
from raygpt.release.sandbox import OUTCOMES


def results_table(reports: list) -> str:
    """pass@1 (and pass@10 when there are 10 samples or more), the outcomes, the time."""
    head = (
        f"{'model':32} {'mode':10} {'problems':>8} {'n':>3} {'pass@1':>7} {'pass@10':>8} "
        + " ".join(f"{o:>9}" for o in OUTCOMES)
        + f" {'generate s':>10} {'execute s':>9}"
    )
    lines = [head]
    for r in reports:
        outcomes = r.outcomes()
        p10 = r.pass_at(10)
        lines.append(
            f"{r.name[:32]:32} {r.mode:10} {len(r.problems):>8} {r.options['samples']:>3} "
            f"{r.pass_at(1):>7.1%} {'-' if p10 is None else f'{p10:.1%}':>8} "
            + " ".join(f"{outcomes[o]:>9}" for o in OUTCOMES)
            + f" {r.generate_s:>10.0f} {r.execute_s:>9.0f}"
        )
    if len(reports) > 1:
        base = reports[0]
        for other in reports[1:]:
            solved = sum(p.correct > 0 for p in other.problems) - sum(
                p.correct > 0 for p in base.problems
            )
            lines.append(
                f"{other.name} vs {base.name}: pass@1 {other.pass_at(1) - base.pass_at(1):+.1%} "
                f"({solved:+d} problems solved)"
            )
    return "\n".join(lines)


def write_results(path: str | Path, reports: list) -> None:
    storage.write_text(path, json.dumps([r.to_dict() for r in reports], indent=1) + "\n")


def plot_pass_at_1(path: str | Path, reports: list) -> None:
    """One bar per model: pass@1, labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in reports]
    values = [100 * r.pass_at(1) for r in reports]
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(reports)), 3.5), dpi=120)
    bars = ax.bar(range(len(reports)), values, color="#2f6fed")
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in values])
    ax.set_xticks(range(len(reports)), names, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("HumanEval pass@1 (%)")
    ax.set_ylim(0, max(10.0, 1.25 * max(values)))
    problems = len(reports[0].problems)
    ax.set_title(f"HumanEval, {problems} problems, {reports[0].mode}")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    storage.write_bytes(path, image.getvalue())


def summary_of(report) -> dict[str, Any]:
    """The few numbers other reports quote (the INT8 release's table)."""
    return {"pass@1": report.pass_at(1), "problems": len(report.problems), "mode": report.mode}
