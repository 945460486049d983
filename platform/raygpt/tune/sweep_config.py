"""Typed sweep configs: a base experiment, a search space, a budget, early stopping.

    experiment: tiny_cpu.yaml          # the base experiment: relative to this file, or the repo
    out_dir: runs/sweep_tiny_cpu       # trials, results table, best config and plot go here
    overrides: {model.n_layer: 2}      # fixed for every trial (dotted keys, as on the command line)
    space: {train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}}
    metric: val_loss
    mode: min
    num_samples: 4
    budget: {steps: 60}                # train.max_iters of every trial; or time_s for the sweep
    asha: {grace_period: 10, reduction_factor: 2}   # leave out for no early stopping
    resources: {trial_cpus: 0.25, reserve_cpus: 1}

Loading checks everything a trial will need before Ray starts: unknown keys, bad
distributions, and every extreme of the space (each choice, each range's ends) built as a real
experiment config and checked against its dataset. Errors name the key and the file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raygpt.config import (
    ExperimentConfig,
    Problem,
    experiment_from_dict,
    load_experiment,
    section_from_dict,
)
from raygpt.errors import ConfigError
from raygpt.tune.search_space import Distribution, check_key, parse_space

METRICS = ("val_loss", "loss")  # what the training loop reports: val_loss at every evaluation
MODES = ("min", "max")
MAX_CORNERS = 256  # beyond this many combinations, each key's extremes are checked alone


@dataclass
class Budget:
    steps: int | None = None  # every trial's train.max_iters (ASHA's max_t); None: the experiment's
    time_s: float | None = None  # the sweep's wall clock; trials still running are left
    # unfinished (a re-run continues them, for another time_s)

    def problems(self) -> list[Problem]:
        found = []
        if self.steps is not None and self.steps < 1:
            found.append((("steps",), f"must be >= 1, got {self.steps}"))
        if self.time_s is not None and self.time_s <= 0:
            found.append((("time_s",), f"must be > 0, got {self.time_s}"))
        return found


@dataclass
class AshaConfig:
    """Asynchronous successive halving: at each rung, trials behind the best 1/rf stop."""

    grace_period: int = 10  # steps a trial trains before it can be stopped (the first rung)
    reduction_factor: float = 2.0  # rungs at grace_period x rf^k; the best 1/rf go on

    def problems(self) -> list[Problem]:
        found = []
        if self.grace_period < 1:
            found.append((("grace_period",), f"must be >= 1, got {self.grace_period}"))
        if self.reduction_factor <= 1:
            found.append((("reduction_factor",), f"must be > 1, got {self.reduction_factor}"))
        return found


@dataclass
class TrialResources:
    trial_cpus: float = 0.25  # the trial itself: it only launches its Ray Train run
    reserve_cpus: float = 1.0  # left free for Ray Data's read and window tasks
    max_concurrent_trials: int | None = None  # None: as many as the cluster's CPUs allow

    def problems(self) -> list[Problem]:
        found = []
        if self.trial_cpus < 0:
            found.append((("trial_cpus",), f"must be >= 0, got {self.trial_cpus}"))
        if self.reserve_cpus < 0:
            found.append((("reserve_cpus",), f"must be >= 0, got {self.reserve_cpus}"))
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            found.append(
                (("max_concurrent_trials",), f"must be >= 1, got {self.max_concurrent_trials}")
            )
        return found


@dataclass
class SweepConfig:
    source: Path  # the sweep YAML
    experiment: Path  # the base experiment config
    out_dir: Path
    space: dict[str, Distribution]
    base: dict[str, Any]  # the base experiment with overrides and budget applied (to_dict form)
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = "val_loss"
    mode: str = "min"
    num_samples: int = 1
    seed: int | None = None  # the random search's seed (None: new samples every sweep)
    budget: Budget = field(default_factory=Budget)
    asha: AshaConfig | None = None
    resources: TrialResources = field(default_factory=TrialResources)

    @property
    def steps(self) -> int:
        return self.base["train"]["max_iters"]

    def trial_steps(self, params: dict[str, Any]) -> int:
        """The steps a trial with these values trains (the same for all here; a scaling
        study's trials each have their own)."""
        return self.steps

    @property
    def steps_text(self) -> str:
        return f"{self.steps} steps"

    def experiment_dict(self, params: dict[str, Any]) -> dict[str, Any]:
        """The base experiment with one trial's values (dotted keys) in it.

        A swept learning rate carries min_lr with it (same ratio as in the base config,
        nanoGPT's learning_rate/10), unless min_lr is swept too.
        """
        raw = copy.deepcopy(self.base)
        for key, value in params.items():
            section, name = key.split(".")
            raw[section][name] = value
        base_lr = self.base["train"]["learning_rate"]
        if "train.learning_rate" in params and "train.min_lr" not in params and base_lr > 0:
            ratio = self.base["train"]["min_lr"] / base_lr
            raw["train"]["min_lr"] = float(params["train.learning_rate"]) * ratio
        return raw

    def experiment_config(self, params: dict[str, Any], out_dir: str | Path) -> ExperimentConfig:
        raw = self.experiment_dict(params)
        raw["train"]["out_dir"] = str(out_dir)
        return experiment_from_dict(raw, source=f"{self.source} (trial {_describe(params)})")

    def to_dict(self) -> dict[str, Any]:
        """What identifies the sweep: a resumed sweep must match it."""
        return {
            "experiment": self.base,
            "space": {key: dist.describe() for key, dist in self.space.items()},
            "metric": self.metric,
            "mode": self.mode,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "budget": dataclasses.asdict(self.budget),
            "asha": None if self.asha is None else dataclasses.asdict(self.asha),
        }


TOP_LEVEL = (
    "experiment",
    "out_dir",
    "overrides",
    "space",
    "metric",
    "mode",
    "num_samples",
    "seed",
    "budget",
    "asha",
    "resources",
)


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and check a sweep YAML; every trial's config is checked before Ray starts."""
    path = Path(path)
    raw = read_config_yaml(path, TOP_LEVEL, "sweep")
    source = str(path)
    experiment = find_experiment(raw["experiment"], path)
    space = parse_space(raw.get("space"), source)
    if not space:
        raise ConfigError(f"{source}: space: needs at least one key to sweep")
    overrides = parse_overrides(raw, source)
    for key in overrides:
        if key in space:
            raise ConfigError(f"{source}: overrides.{key}: also in space; keep one")

    budget = section_from_dict(Budget, raw.get("budget") or {}, "budget", source)
    asha = raw.get("asha")
    asha = None if asha is None else section_from_dict(AshaConfig, asha, "asha", source)
    resources = section_from_dict(TrialResources, raw.get("resources") or {}, "resources", source)
    sweep = SweepConfig(
        source=path,
        experiment=experiment,
        out_dir=sweep_out_dir(raw, path, source),
        space=space,
        base=base_experiment(experiment, overrides, budget, source),
        overrides=overrides,
        metric=_choice(raw, "metric", METRICS, source),
        mode=_choice(raw, "mode", MODES, source),
        num_samples=_integer(raw, "num_samples", 1, source, minimum=1),
        seed=_integer(raw, "seed", None, source, minimum=0),
        budget=budget,
        asha=asha,
        resources=resources,
    )
    _check_schedule(sweep)
    check_trials(sweep)
    return sweep


def read_config_yaml(path: Path, top_level: tuple[str, ...], kind: str) -> dict[str, Any]:
    """A sweep-like YAML's mapping: known top-level keys only, and a base `experiment`."""
    if not path.is_file():
        raise ConfigError(f"{kind} config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with keys {list(top_level)}")
    for key in raw:
        if key not in top_level:
            close = difflib.get_close_matches(str(key), top_level, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{path}: unknown key '{key}'{hint}")
    if "experiment" not in raw:
        raise ConfigError(f"{path}: experiment: missing (the base experiment config to {kind})")
    return raw


def parse_overrides(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """`overrides:`: dotted experiment keys, the same for every trial."""
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: overrides must be a mapping of dotted keys to values")
    for key in overrides:
        check_key(key, source, "overrides")
    return overrides


def check_trials(sweep: SweepConfig) -> None:
    """Every extreme of the space must be a valid experiment with data for it."""
    from raygpt.train.launch import plan_training

    keys = list(sweep.space)
    options = [sweep.space[key].corners() for key in keys]
    combos = list(itertools.islice(itertools.product(*options), MAX_CORNERS + 1))
    if len(combos) > MAX_CORNERS:  # too many to try together: each key's extremes alone
        combos = [
            tuple(value if k == i else options[k][0] for k in range(len(keys)))
            for i in range(len(keys))
            for value in options[i]
        ]
    for combo in combos:
        params = dict(zip(keys, combo, strict=True))
        config = sweep.experiment_config(params, sweep.out_dir / ".check")  # never created
        if config.train.init_from == "resume":
            raise ConfigError(
                f"{sweep.source}: train.init_from=resume: sweep trials start from scratch "
                "or from pretrained weights"
            )
        try:
            plan_training(config)  # the dataset, the batch against it, the starting weights
        except ConfigError as err:
            raise ConfigError(f"{sweep.source}: trial {_describe(params)}: {err}") from None


def trial_cpus(sweep: SweepConfig) -> float:
    """CPUs one trial holds: itself plus its Ray Train workers (at the space's largest)."""
    workers = [sweep.base["scaling"]]
    for key in ("scaling.num_workers", "scaling.cpus_per_worker"):
        if key in sweep.space:
            workers = [
                {**s, key.split(".")[1]: value}
                for s in workers
                for value in sweep.space[key].corners()
            ]
    need = max(float(s["num_workers"]) * float(s["cpus_per_worker"]) for s in workers)
    return sweep.resources.trial_cpus + need


def find_experiment(value: Any, sweep_path: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{sweep_path}: experiment: expected a config path, got {value!r}")
    candidates = [sweep_path.parent / value, Path(value)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " and ".join(str(c) for c in dict.fromkeys(candidates))
    raise ConfigError(f"{sweep_path}: experiment: config not found: {value} (looked at {looked})")


def base_experiment(
    experiment: Path, overrides: dict[str, Any], budget: Budget, source: str
) -> dict[str, Any]:
    raw = load_experiment(experiment).to_dict()
    origins = {}
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = value
        origins[key] = f"{source} (overrides)"
    if budget.steps is not None:
        raw["train"]["max_iters"] = budget.steps
    return experiment_from_dict(raw, source=str(experiment), origins=origins).to_dict()


def _check_schedule(sweep: SweepConfig) -> None:
    if sweep.asha is None:
        return
    grace, steps = sweep.asha.grace_period, sweep.steps
    if grace > steps:
        raise ConfigError(
            f"{sweep.source}: asha.grace_period: {grace} steps is more than the budget of "
            f"{steps} steps: no trial could be stopped early"
        )
    if "train.eval_interval" not in sweep.space:
        interval = sweep.base["train"]["eval_interval"]
        if sweep.metric == "val_loss" and interval > grace:
            raise ConfigError(
                f"{sweep.source}: asha.grace_period: trials are compared at evaluations, "
                f"every {interval} steps (train.eval_interval), so grace_period={grace} "
                "cannot hold; evaluate more often or raise the grace period"
            )


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items())


def sweep_out_dir(raw: dict, path: Path, source: str) -> Path:
    out_dir = _string(raw, "out_dir", f"runs/{path.stem}", source)
    if "://" in out_dir:  # Tune keeps its experiment state in a folder; trials' runs follow it
        raise ConfigError(
            f"{source}: out_dir: a sweep needs a folder (on a cluster, on the shared "
            f"filesystem), not a URI: {out_dir}"
        )
    return Path(out_dir)


def _string(raw: dict, key: str, default: str, source: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: {key}: expected a non-empty string, got {value!r}")
    return value


def _choice(raw: dict, key: str, choices: tuple[str, ...], source: str) -> str:
    value = raw.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"{source}: {key}: must be one of {list(choices)}, got {value!r}")
    return value


def _integer(raw: dict, key: str, default: int | None, source: str, minimum: int) -> int | None:
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{source}: {key}: expected an integer >= {minimum}, got {value!r}")
    return value
