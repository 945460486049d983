"""Typed scaling-study configs: a base experiment, a size rule, IsoFLOP budgets, the fits.

    experiment: tiny_cpu.yaml          # block type, data, batch, optimizer, workers
    out_dir: runs/scaling_cpu
    overrides: {model.position: rope}  # dotted keys, the same for every run (as in a sweep)
    sizes: {aspect_ratio: 16, head_dim: 16}        # the depth/width rule (scaling_sizes.py)
    isoflops:                          # each compute budget (FLOPs) and the depths run at it
      - {flops: 3.0e+11, depths: [1, 2, 3, 4, 5]}
      - {flops: 1.0e+12, depths: [2, 3, 4, 5, 6]}
    trials: {warmup_fraction: 0.05, evals: 2, min_steps: 20}
    fit: {bootstrap: 200, seed: 0}
    recommend: {flops: 1.0e+15, gpu: H100, dtype: bfloat16, mfu: 0.4}
    resources: {trial_cpus: 0.25, reserve_cpus: 1}

Each (budget, depth) is one run: the rule's model trained on D = C / F tokens (F its FLOPs
per token), i.e. round(D / tokens per step) steps, with the learning-rate schedule fitted to
its length (warmup a fraction of it, cosine decay to its end, as Chinchilla does). The runs
are the grid of an IsoFlopSweep, a sweep (sweep_config.py) whose one key picks the run, so
raygpt's sweep runs them: a Ray Tune trial per run, each a Ray Train run, resumable.

Loading checks everything before Ray starts, every run's experiment included; errors name the
key and the file.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raygpt.config import ModelConfig, Problem, experiment_from_dict, section_from_dict
from raygpt.errors import ConfigError
from raygpt.tune.scaling_sizes import ModelSize, SizeRule, measure
from raygpt.tune.search_space import Distribution
from raygpt.tune.sweep_config import (
    Budget,
    SweepConfig,
    TrialResources,
    base_experiment,
    check_trials,
    find_experiment,
    parse_overrides,
    read_config_yaml,
    sweep_out_dir,
)

POINT = "isoflop.point"  # the sweep's one key: which (budget, depth) a trial runs
MIN_DEPTHS = 3  # a parabola needs three sizes
MIN_BUDGETS = 2  # a power law needs two budgets

# Keys the study sets for every run: the rule makes the model, the budget the schedule.
SET_BY_STUDY = {
    "model.n_layer": "the depths in isoflops",
    "model.n_embd": "the size rule (sizes.aspect_ratio)",
    "model.n_head": "the size rule (sizes.head_dim)",
    "model.n_kv_head": "the size rule (sizes.kv_group)",
    "model.mlp_hidden": "the size rule (sizes.mlp_ratio)",
    "train.warmup_iters": "trials.warmup_fraction of each run's steps",
    "train.lr_decay_iters": "each run decays to its own end",
    "train.eval_interval": "trials.evals per run",
    "train.log_interval": "trials.evals per run (every report an evaluation)",
    "train.init_from": "every run trains from scratch",
}

TOP_LEVEL = (
    "experiment",
    "out_dir",
    "overrides",
    "sizes",
    "isoflops",
    "trials",
    "fit",
    "recommend",
    "resources",
)


@dataclass
class TrialSettings:
    warmup_fraction: float = 0.05  # of each run's steps
    evals: int = 2  # val-loss evaluations per run; the last, at its end, is the one fitted
    min_steps: int = 20  # a run shorter than this is refused (it would barely train)

    def problems(self) -> list[Problem]:
        found = []
        if not 0 <= self.warmup_fraction < 1:
            found.append((("warmup_fraction",), f"must be in [0, 1), got {self.warmup_fraction}"))
        if self.evals < 1:
            found.append((("evals",), f"must be >= 1, got {self.evals}"))
        if self.min_steps < 1:
            found.append((("min_steps",), f"must be >= 1, got {self.min_steps}"))
        return found


@dataclass
class FitSettings:
    bootstrap: int = 200  # resamples of the runs for the intervals
    seed: int = 0

    def problems(self) -> list[Problem]:
        found = []
        if self.bootstrap < 0:
            found.append((("bootstrap",), f"must be >= 0, got {self.bootstrap}"))
        if self.seed < 0:
            found.append((("seed",), f"must be >= 0, got {self.seed}"))
        return found


@dataclass
class RecommendSettings:
    """The budget to recommend a model for: FLOPs, or GPU-hours at an MFU."""

    flops: float | None = None  # None (and no gpu_hours): 10x the study's largest budget
    gpu_hours: float | None = None
    gpu: str = "H100"  # its dense peak from train.step.PEAK_FLOPS
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    mfu: float = 0.4  # model FLOPs utilization assumed for the conversion

    def problems(self) -> list[Problem]:
        from raygpt.train.step import PEAK_FLOPS

        found = []
        if self.flops is not None and self.gpu_hours is not None:
            found.append((("flops", "gpu_hours"), "give one budget: flops or gpu_hours"))
        for name in ("flops", "gpu_hours"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                found.append(((name,), f"must be > 0, got {value}"))
        if not 0 < self.mfu <= 1:
            found.append((("mfu",), f"must be in (0, 1], got {self.mfu}"))
        peaks = dict(PEAK_FLOPS)
        if self.gpu not in peaks:
            found.append((("gpu",), f"must be one of {list(peaks)}, got {self.gpu!r}"))
        elif self.dtype not in peaks[self.gpu]:
            found.append((("dtype",), f"{self.gpu} has no {self.dtype} peak listed"))
        return found

    @property
    def peak_flops(self) -> float:
        from raygpt.train.step import PEAK_FLOPS

        return dict(PEAK_FLOPS)[self.gpu][self.dtype]

    def gpu_hours_for(self, flops: float) -> float:
        return flops / (self.peak_flops * self.mfu * 3600)


@dataclass(frozen=True)
class IsoFlopPoint:
    """One run of the study: a model of the rule at one budget."""

    budget: float  # C, the FLOPs this run is meant to cost
    size: ModelSize
    steps: int
    tokens_per_step: int
    settings: dict[str, Any]  # dotted experiment keys this run sets

    @property
    def label(self) -> str:
        return point_label(self.budget, self.size.depth)

    @property
    def tokens(self) -> int:
        """D: what the run trains on (its steps rounded, so C is met to within half a step)."""
        return self.steps * self.tokens_per_step

    @property
    def flops(self) -> float:
        return self.size.flops_per_token * self.tokens


def point_label(budget: float, depth: int) -> str:
    return f"C={budget:.3g},L={depth}"


@dataclass
class IsoFlopSweep(SweepConfig):
    """The study's runs as a sweep: a grid over POINT, each value one (budget, depth)."""

    points: dict[str, IsoFlopPoint] = field(default_factory=dict)

    def experiment_dict(self, params: dict[str, Any]) -> dict[str, Any]:
        raw = copy.deepcopy(self.base)
        if POINT in params:  # no point: the base experiment (the sweep prepares its data)
            for key, value in self.points[params[POINT]].settings.items():
                section, name = key.split(".")
                raw[section][name] = value
        return raw

    def trial_steps(self, params: dict[str, Any]) -> int:
        return self.points[params[POINT]].steps

    @property
    def steps_text(self) -> str:
        steps = [point.steps for point in self.points.values()]
        return f"{min(steps)}-{max(steps)} steps"

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "points": {label: point.settings for label, point in self.points.items()},
        }


@dataclass
class ScalingStudy:
    source: Path
    sweep: IsoFlopSweep
    rule: SizeRule
    base_model: ModelConfig  # the block every size is made from (vocabulary included)
    points: list[IsoFlopPoint]  # budget by budget, depth by depth
    trials: TrialSettings
    fit: FitSettings
    recommend: RecommendSettings

    @property
    def out_dir(self) -> Path:
        return self.sweep.out_dir

    @property
    def budgets(self) -> list[float]:
        return sorted({point.budget for point in self.points})

    @property
    def tokens_per_step(self) -> int:
        return self.points[0].tokens_per_step

    @property
    def recommend_flops(self) -> float:
        if self.recommend.flops is not None:
            return self.recommend.flops
        if self.recommend.gpu_hours is not None:
            return self.recommend.gpu_hours * 3600 * self.recommend.peak_flops * self.recommend.mfu
        return 10 * max(self.budgets)

    def size(self, depth: int) -> ModelSize:
        return measure(self.rule.model(self.base_model, depth))


def load_scaling(path: str | Path) -> ScalingStudy:
    """Read and check a scaling-study YAML; every run's experiment is checked before Ray."""
    from raygpt.tokenizer import get_tokenizer

    path = Path(path)
    raw = read_config_yaml(path, TOP_LEVEL, "scaling study")
    source = str(path)
    experiment = find_experiment(raw["experiment"], path)
    overrides = parse_overrides(raw, source)
    for key in overrides:
        if key in SET_BY_STUDY:
            raise ConfigError(f"{source}: overrides.{key}: set by the study: {SET_BY_STUDY[key]}")
    base = base_experiment(experiment, overrides, Budget(), source)
    if base["train"]["init_from"] != "scratch":
        raise ConfigError(
            f"{experiment}: train.init_from={base['train']['init_from']}: a scaling study "
            "trains every model from scratch; use a base experiment with init_from: scratch"
        )
    rule = section_from_dict(SizeRule, raw.get("sizes") or {}, "sizes", source)
    trials = section_from_dict(TrialSettings, raw.get("trials") or {}, "trials", source)
    fit = section_from_dict(FitSettings, raw.get("fit") or {}, "fit", source)
    recommend = section_from_dict(
        RecommendSettings, raw.get("recommend") or {}, "recommend", source
    )
    resources = section_from_dict(TrialResources, raw.get("resources") or {}, "resources", source)
    budgets = parse_isoflops(raw.get("isoflops"), source)

    config = experiment_from_dict(base, source=str(experiment))
    # From scratch the data decides the vocabulary (its tokenizer's), and so the head's size.
    vocab = get_tokenizer(config.data.tokenizer).vocab_size
    base_model = ModelConfig(**{**base["model"], "vocab_size": vocab})
    train, scaling = config.train, config.scaling
    tokens_per_step = (
        scaling.num_workers
        * train.gradient_accumulation_steps
        * train.batch_size
        * config.model.block_size
    )
    sizes: dict[int, ModelSize] = {}
    points = []
    for index, (flops, depths) in enumerate(budgets):
        for depth in depths:
            model = rule.model(base_model, depth)
            problems = model.problems()
            if problems:
                keys, problem = problems[0]
                raise ConfigError(
                    f"{source}: isoflops[{index}].depths: depth {depth} under the size rule "
                    f"(sizes) gives model.{keys[0]}: {problem}"
                )
            if depth not in sizes:
                sizes[depth] = measure(model)
            size = sizes[depth]
            steps = round(flops / (size.flops_per_token * tokens_per_step))
            if steps < trials.min_steps:
                raise ConfigError(
                    f"{source}: isoflops[{index}].depths: depth {depth} ({size.params:,} "
                    f"params, {size.flops_per_token:.3g} FLOPs/token) gets {steps} steps of "
                    f"{tokens_per_step:,} tokens from {flops:.3g} FLOPs, fewer than "
                    f"trials.min_steps={trials.min_steps}: drop the depth or raise the budget"
                )
            points.append(
                IsoFlopPoint(
                    budget=flops,
                    size=size,
                    steps=steps,
                    tokens_per_step=tokens_per_step,
                    settings=_run_settings(model, steps, trials, base, rule),
                )
            )
    sweep = IsoFlopSweep(
        source=path,
        experiment=experiment,
        out_dir=sweep_out_dir(raw, path, source),
        space={POINT: Distribution(POINT, "grid", tuple(p.label for p in points))},
        base=base,
        overrides=overrides,
        resources=resources,
        points={point.label: point for point in points},
    )
    check_trials(sweep)  # each run's experiment, built for real and checked against its data
    return ScalingStudy(
        source=path,
        sweep=sweep,
        rule=rule,
        base_model=base_model,
        points=points,
        trials=trials,
        fit=fit,
        recommend=recommend,
    )


def parse_isoflops(raw: Any, source: str) -> list[tuple[float, list[int]]]:
    """`isoflops:` -> [(flops, depths)], budgets ascending."""
    example = "[{flops: 1.0e+12, depths: [2, 3, 4]}, ...]"
    if not isinstance(raw, list) or len(raw) < MIN_BUDGETS:
        raise ConfigError(
            f"{source}: isoflops: expected a list of at least {MIN_BUDGETS} budgets like "
            f"{example}, got {raw!r}"
        )
    budgets = []
    for index, entry in enumerate(raw):
        where = f"{source}: isoflops[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"flops", "depths"}:
            raise ConfigError(
                f"{where}: expected {{flops: <FLOPs>, depths: [<n_layer>, ...]}}, got {entry!r}"
            )
        flops = _positive_number(entry["flops"], f"{where}.flops")
        depths = entry["depths"]
        if (
            not isinstance(depths, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in depths)
            or len(set(depths)) < MIN_DEPTHS
        ):
            raise ConfigError(
                f"{where}.depths: expected a list of at least {MIN_DEPTHS} different depths "
                f"(integers >= 1; a parabola needs three sizes), got {depths!r}"
            )
        budgets.append((flops, sorted(set(depths))))
    flops = [f for f, _ in budgets]
    if len(set(flops)) != len(flops):
        raise ConfigError(f"{source}: isoflops: each budget once, got {flops}")
    return sorted(budgets)


def _run_settings(
    model: ModelConfig, steps: int, trials: TrialSettings, base: dict[str, Any], rule: SizeRule
) -> dict[str, Any]:
    every = math.ceil(steps / trials.evals)
    lr_scale = rule.learning_rate_scale(model.n_embd)
    return {
        "model.n_layer": model.n_layer,
        "model.n_embd": model.n_embd,
        "model.n_head": model.n_head,
        "model.n_kv_head": model.n_kv_head,
        "model.mlp_hidden": model.mlp_hidden,
        "train.learning_rate": base["train"]["learning_rate"] * lr_scale,
        "train.min_lr": base["train"]["min_lr"] * lr_scale,
        "train.max_iters": steps,
        "train.warmup_iters": round(trials.warmup_fraction * steps),
        "train.lr_decay_iters": None,
        "train.eval_interval": every,
        "train.log_interval": every,
    }


def _positive_number(value: Any, where: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads `1e12` (no dot, no sign) as a string
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{where}: expected a number of FLOPs > 0, got {value!r}")
    return number
