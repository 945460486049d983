"""What a scaling study leaves in its folder, beside the sweep's own files:

    scaling.md     every run, the IsoFLOP minima, every fitted constant with its interval
                   beside Chinchilla's, and the recommendation
    scaling.json   the same, for tools
    scaling.png    the IsoFLOP curves (loss over N, a parabola per budget) and the fitted
                   frontier (N_opt and D_opt over C, with the bootstrap's band)

Everything here reads finished numbers; no Ray.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raygpt.tune.scaling_config import ScalingStudy
from raygpt.tune.scaling_fit import CHINCHILLA, PERCENTILES, ScalingFit, isoflop_minima
from raygpt.tune.scaling_recommend import Recommendation, count
from raygpt.tune.scaling_sizes import FLOPS_FORMULA

MARKDOWN = "scaling.md"
JSON = "scaling.json"
PLOT = "scaling.png"

N_DEFINITION = (
    "non-embedding parameters (GPT.num_params()): the blocks and the output head; "
    "lookup tables (learned positions, an untied token embedding) left out"
)


@dataclass
class StudyRun:
    """One run: what the study asked of it and what it reached."""

    label: str
    trial: str | None  # its folder in the sweep (None: not started)
    status: str  # the sweep's: done, error, running, pending, unfinished
    budget: float
    depth: int
    n_embd: int
    n_head: int
    params: int  # N
    flops_per_token: float  # F
    steps: int
    tokens: int  # D
    flops: float  # F x D
    val_loss: float | None  # at the run's end (None unless done)
    tokens_per_s: float | None  # the run's median training throughput
    run_dir: str | None


def write_report(
    study: ScalingStudy, runs: list[StudyRun], fit: ScalingFit, recommendation: Recommendation
) -> list[Path]:
    out = study.out_dir
    (out / MARKDOWN).write_text(markdown(study, runs, fit, recommendation))
    data = summary_json(study, runs, fit, recommendation)
    (out / JSON).write_text(json.dumps(data, indent=2) + "\n")
    plot(study, runs, fit, recommendation, out / PLOT)
    return [out / MARKDOWN, out / JSON, out / PLOT]


# --- tables ----------------------------------------------------------------------------------


def runs_table(runs: list[StudyRun]) -> str:
    """Every run, budget by budget; * marks each budget's lowest val loss."""
    best = {}
    for run in runs:
        if run.val_loss is not None and run.val_loss < best.get(run.budget, (np.inf,))[0]:
            best[run.budget] = (run.val_loss, run.label)
    header = ["C (FLOPs)", "depth", "n_embd", "N", "F/token", "steps", "D", "D/N", "val loss"]
    header += ["tok/s", "status"]
    rows = []
    for run in sorted(runs, key=lambda r: (r.budget, r.params)):
        mark = " *" if best.get(run.budget, (None, None))[1] == run.label else ""
        rows.append(
            [
                f"{run.budget:.3g}",
                str(run.depth),
                str(run.n_embd),
                count(run.params),
                f"{run.flops_per_token:.3g}",
                str(run.steps),
                count(run.tokens),
                f"{run.tokens / run.params:.1f}",
                "-" if run.val_loss is None else f"{run.val_loss:.4f}{mark}",
                "-" if run.tokens_per_s is None else f"{run.tokens_per_s:,.0f}",
                run.status,
            ]
        )
    return _table(header, rows)


def minima_table(fit: ScalingFit) -> str:
    """Every budget's vertex (approach 2), and whether the power laws use it."""
    rows = []
    for budget, v in isoflop_minima(fit.runs).items():
        if v is None:
            rows.append([f"{budget:.3g}", "-", "-", "-", "-", "no: the parabola opens down"])
            continue
        used = "yes" if v.inside else "no: beyond the sampled sizes (add sizes on that side)"
        rows.append(
            [
                f"{v.budget:.3g}",
                count(v.params),
                count(v.tokens),
                f"{v.tokens / v.params:.1f}",
                f"{v.loss:.4f}",
                used,
            ]
        )
    header = ["C (FLOPs)", "N_opt", "D_opt", "D_opt/N_opt", "min loss", "in the power laws"]
    return _table(header, rows)


def constants(fit: ScalingFit) -> list[dict[str, Any]]:
    """Every fitted constant: value, 80% interval, Chinchilla's."""
    chin2, chin3 = CHINCHILLA["approach2"], CHINCHILLA["approach3"]
    a3 = chin3["beta"] / (chin3["alpha"] + chin3["beta"])
    b3 = chin3["alpha"] / (chin3["alpha"] + chin3["beta"])
    found = []

    def add(name, meaning, value, getter, chinchilla, comparable=True):
        found.append(
            {
                "name": name,
                "meaning": meaning,
                "value": value,
                "interval": fit.interval(getter),
                "chinchilla": chinchilla,
                "comparable": comparable,
            }
        )

    a2 = fit.approach2
    if a2 is not None:
        add(
            "a",
            "N_opt ∝ C^a (approach 2)",
            a2.params.exponent,
            lambda r, _: r and r.params.exponent,
            chin2["a"],
        )
        add(
            "b",
            "D_opt ∝ C^b (approach 2)",
            a2.tokens.exponent,
            lambda r, _: r and r.tokens.exponent,
            chin2["b"],
        )
        add(
            "k_N",
            "N_opt = k_N C^a",
            a2.params.coefficient,
            lambda r, _: r and r.params.coefficient,
            None,
        )
        add(
            "k_D",
            "D_opt = k_D C^b",
            a2.tokens.coefficient,
            lambda r, _: r and r.tokens.coefficient,
            None,
        )
    p = fit.approach3
    add("a3", "N_opt ∝ C^a from approach 3: beta/(alpha+beta)", p.a, lambda _, q: q.a, a3)
    add("b3", "D_opt ∝ C^b from approach 3: alpha/(alpha+beta)", p.b, lambda _, q: q.b, b3)
    add("alpha", "L = E + A/N^alpha + B/D^beta", p.alpha, lambda _, q: q.alpha, chin3["alpha"])
    add("beta", "", p.beta, lambda _, q: q.beta, chin3["beta"])
    add("E", "irreducible loss (nats per token)", p.E, lambda _, q: q.E, chin3["E"], False)
    add("A", "", p.A, lambda _, q: q.A, chin3["A"], False)
    add("B", "", p.B, lambda _, q: q.B, chin3["B"], False)
    return found


def constants_table(fit: ScalingFit) -> str:
    rows = []
    for c in constants(fit):
        interval = c["interval"]
        chin = "-" if c["chinchilla"] is None else f"{c['chinchilla']:.4g}"
        if c["chinchilla"] is not None and not c["comparable"]:
            chin += " (other data and tokens)"
        rows.append(
            [
                c["name"],
                _g(c["value"]),
                "-" if interval is None else f"{_g(interval[0])} to {_g(interval[1])}",
                chin,
                c["meaning"],
            ]
        )
    low, high = PERCENTILES
    header = ["constant", "fit", f"{high - low:.0f}% interval", "Chinchilla", "meaning"]
    return _table(header, rows)


def markdown(
    study: ScalingStudy, runs: list[StudyRun], fit: ScalingFit, recommendation: Recommendation
) -> str:
    base = study.base_model
    block = "modern" if base.position == "rope" else "GPT-2"
    rule = study.rule
    lines = [
        f"# IsoFLOP scaling study: {study.source}",
        "",
        f"{len(runs)} runs, {len(study.budgets)} budgets; {block} block "
        f"(position {base.position}, norm {base.norm}, mlp {base.mlp}), block_size "
        f"{base.block_size}, vocabulary {base.vocab_size}; size rule n_embd = "
        f"{rule.aspect_ratio} x depth, heads of {rule.head_dim}; {study.tokens_per_step:,} "
        "tokens per step.",
        "",
        f"- N: {N_DEFINITION}.",
        f"- FLOPs per token F = {FLOPS_FORMULA}; a run of D tokens costs C = F x D.",
        "- val loss: the run's last evaluation, at its final step, on the same val windows "
        "for every run (nats per token).",
        "",
        "## Runs",
        "",
        runs_table(runs),
        "",
        "## IsoFLOP minima (approach 2)",
        "",
        minima_table(fit),
        "",
        "## Fitted constants",
        "",
        constants_table(fit),
        "",
        f"Intervals: {len(fit.resamples)} bootstrap resamples of the runs (within each "
        f"budget), {fit.approach2_resamples} with an approach-2 fit. Approach 3's a and b "
        "assume C = 6ND, as the paper does.",
        "",
        "## Recommendation",
        "",
        recommendation.line() + f" (N from {recommendation.source}; loss from approach 3).",
        "",
        f"Approach 3 alone would choose depth {recommendation.approach3.size.depth} "
        f"(N = {count(recommendation.approach3.size.params)}, D = "
        f"{count(recommendation.approach3.tokens)}, expected loss "
        f"{recommendation.approach3.loss:.3f}).",
        "",
    ]
    return "\n".join(lines)


def summary_json(
    study: ScalingStudy, runs: list[StudyRun], fit: ScalingFit, recommendation: Recommendation
) -> dict[str, Any]:
    a2 = fit.approach2
    return {
        "study": str(study.source),
        "out_dir": str(study.out_dir),
        "model": dataclasses.asdict(study.base_model),
        "size_rule": dataclasses.asdict(study.rule),
        "tokens_per_step": study.tokens_per_step,
        "N": N_DEFINITION,
        "flops_per_token": FLOPS_FORMULA,
        "runs": [dataclasses.asdict(run) for run in runs],
        "isoflop_minima": [
            {"budget": budget, "vertex": None if v is None else dataclasses.asdict(v)}
            for budget, v in isoflop_minima(fit.runs).items()
        ],
        "approach2": None if a2 is None else {"budgets": [v.budget for v in a2.vertices]},
        "approach3": {
            **{k: getattr(fit.approach3, k) for k in ("E", "A", "B", "alpha", "beta")},
            "huber_objective": fit.approach3.objective,
        },
        "constants": constants(fit),
        "bootstrap": {
            "resamples": len(fit.resamples),
            "with_approach2": fit.approach2_resamples,
            "percentiles": list(PERCENTILES),
            "seed": study.fit.seed,
        },
        "chinchilla": CHINCHILLA,
        "recommendation": {
            **dataclasses.asdict(recommendation),
            "line": recommendation.line(),
        },
    }


# --- the plot --------------------------------------------------------------------------------


def plot(
    study: ScalingStudy,
    runs: list[StudyRun],
    fit: ScalingFit,
    recommendation: Recommendation,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, frontier_n, frontier_d) = plt.subplots(1, 3, figsize=(15, 4.6), dpi=110)
    colors = plt.cm.viridis(np.linspace(0.05, 0.85, len(study.budgets)))
    vertices = isoflop_minima(fit.runs)
    for color, budget in zip(colors, study.budgets, strict=True):
        done = sorted(
            (r for r in runs if r.budget == budget and r.val_loss is not None),
            key=lambda r: r.params,
        )
        if not done:
            continue
        n = np.array([r.params for r in done], dtype=float)
        loss = np.array([r.val_loss for r in done])
        curves.plot(n, loss, "o", color=color, label=f"C = {budget:.2g}")
        if len(np.unique(n)) >= 3:
            x = np.linspace(np.log(n.min()), np.log(n.max()), 100)
            curves.plot(
                np.exp(x),
                np.polyval(np.polyfit(np.log(n), loss, 2), x),
                "-",
                color=color,
                linewidth=1.2,
            )
        if vertices.get(budget) is not None:
            v = vertices[budget]
            curves.plot(
                v.params,
                v.loss,
                "*",
                markersize=13,
                color=color,
                markeredgecolor="black",
                fillstyle="full" if v.inside else "none",
            )
    curves.set_xscale("log")
    curves.set_xlabel("N (non-embedding parameters)")
    curves.set_ylabel("final val loss (nats/token)")
    curves.set_title("IsoFLOP curves (* = parabola's minimum)")
    curves.grid(alpha=0.3, which="both")
    curves.legend(fontsize=8)

    low = min(study.budgets) / 2
    grid = np.geomspace(low, recommendation.flops * 2, 60)
    for axis, what in ((frontier_n, "params"), (frontier_d, "tokens")):
        _frontier(axis, fit, grid, what)
        chosen = recommendation.chosen
        value = chosen.size.params if what == "params" else chosen.tokens
        axis.plot(
            recommendation.flops,
            value,
            "D",
            color="crimson",
            markersize=8,
            label=f"recommended at {recommendation.flops:.2g}",
        )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("C (FLOPs)")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    frontier_n.set_ylabel("N_opt")
    frontier_n.set_title("compute-optimal model size")
    frontier_d.set_ylabel("D_opt (tokens)")
    frontier_d.set_title("compute-optimal tokens")
    fig.suptitle(f"{study.out_dir.name}: {len([r for r in runs if r.val_loss])} runs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _frontier(axis, fit: ScalingFit, grid: np.ndarray, what: str) -> None:
    """Approach 2's vertices and power law (with the bootstrap's 80% band), approach 3's."""
    a2 = fit.approach2
    if a2 is not None:
        law = a2.params if what == "params" else a2.tokens
        points = [(v.budget, getattr(v, what)) for v in a2.vertices]
        axis.plot(*zip(*points, strict=True), "o", color="black", label="IsoFLOP minima used")
        exponent = law.exponent
        axis.plot(grid, law(grid), "-", color="black", label=f"approach 2: C^{exponent:.2f}")
        laws = [getattr(r, what) for r, _ in fit.resamples if r is not None]
        if len(laws) >= 2:
            band = np.percentile([law_i(grid) for law_i in laws], PERCENTILES, axis=0)
            axis.fill_between(
                grid,
                band[0],
                band[1],
                color="gray",
                alpha=0.25,
                label=f"{PERCENTILES[1] - PERCENTILES[0]:.0f}% bootstrap band",
            )
    p = fit.approach3
    n_opt = np.array([p.optimal_params(c) for c in grid])
    values = n_opt if what == "params" else grid / (6 * n_opt)
    exponent = p.a if what == "params" else p.b
    axis.plot(grid, values, "--", color="tab:orange", label=f"approach 3: C^{exponent:.2f}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def render(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([render(header), rule, *(render(r) for r in rows)])


def _g(value: float) -> str:
    return f"{value:.4g}"
