"""Scaling laws fitted to IsoFLOP runs, with no Ray: Chinchilla's approaches 2 and 3, bootstrap.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models":

Approach 2 (IsoFLOP profiles, §3.2). For each compute budget C, a parabola of final loss over
log N; its vertex is N_opt(C). The same over log D gives D_opt(C) (a run's tokens come from its
real FLOPs per token, so D is not assumed to be C / 6N). Straight lines through the vertices in
log-log are the power laws N_opt = k_N C^a and D_opt = k_D C^b.

Approach 3 (a parametric loss, §3.3). L(N, D) = E + A / N^alpha + B / D^beta over every run,
fitted as in the paper: the Huber loss (delta 1e-3) between log L and
LSE(log A - alpha log N, log B - beta log D, log E), minimised with L-BFGS; the starts are the
paper's grid, scored first, and the best few are optimised (one optimisation per start of the
4,500 would take minutes and ends in the same minimum). Under C = 6ND it implies
N_opt = G (C/6)^(beta/(alpha+beta)) and D_opt = (C/6)^(alpha/(alpha+beta)) / G with
G = (alpha A / (beta B))^(1/(alpha+beta)).

Uncertainty: a bootstrap over runs. Each resample draws, for every budget, as many runs as the
budget has, with replacement, from that budget's runs (every IsoFLOP curve keeps its size), and
every fit is redone on it. Intervals are the 10th and 90th percentiles over the resamples
(Chinchilla's table 2 reports the same). Only minima within their budget's sampled sizes make
the power laws; a resample without two such budgets has no approach-2 fit and is left out of
those intervals (counted).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

HUBER_DELTA = 1e-3
# The paper's grid of starts: alpha, beta, e = log E, a = log A, b = log B.
START_GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.1, 5.0),
    "b": np.arange(0.0, 25.1, 5.0),
}
BEST_STARTS = 6  # grid points optimised for the point estimate
RESAMPLE_STARTS = 1  # ... and for each bootstrap resample (plus the point estimate's minimum)
PERCENTILES = (10.0, 90.0)

# Chinchilla's own estimates (Hoffmann et al. 2022, table 2 and eq. 10), for comparison.
CHINCHILLA = {
    "approach2": {"a": 0.49, "b": 0.51, "a_interval": (0.462, 0.534), "b_interval": (0.483, 0.529)},
    "approach3": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
}


@dataclass(frozen=True)
class Run:
    """One finished run of the study, as the fits see it."""

    budget: float  # the IsoFLOP curve it belongs to (FLOPs)
    params: float  # N, non-embedding parameters
    tokens: float  # D, tokens trained on
    loss: float  # final val loss


@dataclass(frozen=True)
class Vertex:
    """The minimum of one budget's IsoFLOP curve (approach 2)."""

    budget: float
    params: float  # N_opt: the vertex of loss over log N
    tokens: float  # D_opt: the vertex of loss over log D
    loss: float  # the curve's minimum loss (over log N)
    inside: bool  # both vertices lie within the budget's sampled sizes (no extrapolation)


@dataclass(frozen=True)
class PowerLaw:
    exponent: float
    coefficient: float

    def __call__(self, flops: float | np.ndarray) -> float | np.ndarray:
        return self.coefficient * np.asarray(flops, dtype=float) ** self.exponent


@dataclass(frozen=True)
class Approach2:
    vertices: list[Vertex]  # the minima the laws go through: within their sampled sizes
    params: PowerLaw  # N_opt = k_N C^a
    tokens: PowerLaw  # D_opt = k_D C^b


@dataclass(frozen=True)
class Parametric:
    """Approach 3: L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float  # the Huber objective at the fit (mean over runs, in units of delta)

    def loss(self, params: float | np.ndarray, tokens: float | np.ndarray) -> np.ndarray:
        n, d = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        with np.errstate(over="ignore"):  # N^alpha past float range: that term is just 0
            return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def a(self) -> float:
        """N_opt ∝ C^a under C = 6ND."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ∝ C^b under C = 6ND."""
        return self.alpha / (self.alpha + self.beta)

    def optimal_params(self, flops: float) -> float:
        """N_opt(C) under C = 6ND (the paper's closed form)."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return g * (flops / 6) ** self.a


@dataclass
class ScalingFit:
    """Both approaches on every run, and the same fits on each bootstrap resample."""

    runs: list[Run]
    approach2: Approach2 | None  # None: fewer than two budgets have a minimum
    approach3: Parametric
    resamples: list[tuple[Approach2 | None, Parametric]] = field(default_factory=list)

    def interval(
        self, value: Callable[[Approach2 | None, Parametric], float | None]
    ) -> tuple[float, float] | None:
        """The 10th-90th percentile of `value` over the resamples that define it."""
        values = [v for v in (value(a2, a3) for a2, a3 in self.resamples) if v is not None]
        values = [v for v in values if np.isfinite(v)]
        if len(values) < 2:
            return None
        low, high = np.percentile(values, PERCENTILES)
        return float(low), float(high)

    @property
    def approach2_resamples(self) -> int:
        """Resamples with an approach-2 fit (the others lacked two budgets with a minimum)."""
        return sum(a2 is not None for a2, _ in self.resamples)


def fit_scaling(runs: Sequence[Run], bootstrap: int = 200, seed: int = 0) -> ScalingFit:
    """Approaches 2 and 3 on the runs, then on `bootstrap` resamples of them."""
    runs = list(runs)
    if len({run.budget for run in runs}) < 2:
        raise ValueError("a scaling fit needs runs at two or more budgets")
    approach3 = fit_parametric(runs)
    fit = ScalingFit(runs, fit_isoflops(runs), approach3)
    rng = np.random.default_rng(seed)
    by_budget = _by_budget(runs)
    for _ in range(bootstrap):
        sample = [
            curve[i]
            for curve in by_budget.values()
            for i in rng.integers(len(curve), size=len(curve))
        ]
        fit.resamples.append(
            (
                fit_isoflops(sample),
                fit_parametric(sample, starts=RESAMPLE_STARTS, also_from=[approach3]),
            )
        )
    return fit


# --- approach 2 ------------------------------------------------------------------------------


def fit_isoflops(runs: Sequence[Run]) -> Approach2 | None:
    """Power laws through the budgets' minima that lie within their sampled sizes (a vertex
    beyond them is the parabola's extrapolation, not a measurement); None without two."""
    vertices = [v for v in isoflop_minima(runs).values() if v is not None and v.inside]
    if len(vertices) < 2:
        return None
    budgets = [v.budget for v in vertices]
    return Approach2(
        vertices=vertices,
        params=power_law(budgets, [v.params for v in vertices]),
        tokens=power_law(budgets, [v.tokens for v in vertices]),
    )


def isoflop_minima(runs: Sequence[Run]) -> dict[float, Vertex | None]:
    """Each budget's vertex (None: its parabola has no minimum), budgets ascending."""
    return {budget: curve_minimum(curve) for budget, curve in _by_budget(runs).items()}


def curve_minimum(curve: Sequence[Run]) -> Vertex | None:
    """The vertices of loss over log N and over log D; None if either parabola has none."""
    log_n = np.log([run.params for run in curve])
    log_d = np.log([run.tokens for run in curve])
    loss = np.array([run.loss for run in curve])
    at_n, at_d = parabola_vertex(log_n, loss), parabola_vertex(log_d, loss)
    if at_n is None or at_d is None:
        return None
    inside = log_n.min() <= at_n[0] <= log_n.max() and log_d.min() <= at_d[0] <= log_d.max()
    return Vertex(
        budget=curve[0].budget,
        params=float(np.exp(at_n[0])),
        tokens=float(np.exp(at_d[0])),
        loss=at_n[1],
        inside=bool(inside),
    )


def parabola_vertex(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """(x, y) at the minimum of the least-squares parabola; None if it has none (fewer than
    three distinct x, or it opens downward)."""
    if len(np.unique(x)) < 3:
        return None
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
        return None
    x_min = -c1 / (2 * c2)
    return float(x_min), float(c0 - c1 * c1 / (4 * c2))


def power_law(flops: Sequence[float], values: Sequence[float]) -> PowerLaw:
    """y = k C^e, least squares on log y over log C."""
    exponent, log_k = np.polyfit(np.log(flops), np.log(values), 1)
    return PowerLaw(float(exponent), float(np.exp(log_k)))


# --- approach 3 ------------------------------------------------------------------------------


def fit_parametric(
    runs: Sequence[Run], starts: int = BEST_STARTS, also_from: Sequence[Parametric] = ()
) -> Parametric:
    """E + A/N^alpha + B/D^beta by L-BFGS from the best `starts` points of the paper's grid
    (and from `also_from`); the lowest objective wins."""
    data = np.array([[np.log(r.params), np.log(r.tokens), np.log(r.loss)] for r in runs]).T
    grid = np.array(list(itertools.product(*START_GRID.values())))  # (alpha, beta, e, a, b)
    scores = _huber_objective(grid.T, *data)  # every start at once
    chosen = list(grid[np.argsort(scores, kind="stable")[:starts]])
    chosen += [
        np.array([p.alpha, p.beta, np.log(p.E), np.log(p.A), np.log(p.B)]) for p in also_from
    ]
    theta, value = min((_lbfgs(start, data) for start in chosen), key=lambda fit: fit[1])
    alpha, beta, e, a, b = theta
    return Parametric(
        E=float(np.exp(e)),
        A=float(np.exp(a)),
        B=float(np.exp(b)),
        alpha=float(alpha),
        beta=float(beta),
        objective=value,
    )


def _huber_objective(theta, log_n, log_d, log_loss, gradient: bool = False):
    """The mean Huber loss of the log-loss residuals, in units of delta (its minimum is the
    paper's). theta holds (alpha, beta, e, a, b): shape (5,) for one value, (5, S) for S values
    at once; with `gradient` (one theta), also d value / d theta."""
    alpha, beta, e, a, b = (np.asarray(v, dtype=float)[..., None] for v in theta)
    terms = np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e))
    top = terms.max(0)  # log-sum-exp, without overflow
    weights = np.exp(terms - top)
    total = weights.sum(0)
    residual = top + np.log(total) - log_loss
    inside = np.abs(residual) <= HUBER_DELTA
    huber = np.where(
        inside, 0.5 * residual**2, HUBER_DELTA * (np.abs(residual) - 0.5 * HUBER_DELTA)
    )
    value = huber.mean(-1) / HUBER_DELTA
    if not gradient:
        return value
    weights /= total  # each term's share of the log-sum-exp: its derivative
    slope = np.where(inside, residual, HUBER_DELTA * np.sign(residual))
    slope /= residual.size * HUBER_DELTA  # d value / d predicted log-loss, per run
    w_n, w_d, w_e = weights * slope
    grad = [-(w_n * log_n).sum(), -(w_d * log_d).sum(), w_e.sum(), w_n.sum(), w_d.sum()]
    return float(value), np.array(grad)


def _lbfgs(start: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, float]:
    """torch's L-BFGS from one start, on the objective and its gradient: (theta, value)."""
    import torch

    theta = torch.tensor(start, dtype=torch.float64)
    optimizer = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        value, grad = _huber_objective(theta.numpy(), *data, gradient=True)
        theta.grad = torch.from_numpy(grad)
        return torch.tensor(value, dtype=torch.float64)

    optimizer.step(closure)
    return theta.numpy().copy(), float(_huber_objective(theta.numpy(), *data))


def _by_budget(runs: Sequence[Run]) -> dict[float, list[Run]]:
    curves: dict[float, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (r.budget, r.params)):
        curves.setdefault(run.budget, []).append(run)
    return curves
