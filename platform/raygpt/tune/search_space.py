"""A sweep's search space: dotted config keys, each with one distribution.

    space:
      train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
      train.weight_decay:  {uniform: [0.0, 0.2]}
      train.warmup_iters:  {randint: [0, 50]}       # high excluded, as in numpy and Ray Tune
      model.n_embd:        {choice: [64, 128]}
      model.n_layer:       {grid: [2, 4]}           # every value, num_samples times each

Parsing is Ray-free, so a bad space fails before Ray starts; `to_tune` turns a checked
distribution into a Ray Tune domain inside the sweep.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from typing import Any

from raygpt.config import SECTIONS
from raygpt.errors import ConfigError

RANGES = ("loguniform", "uniform", "randint")  # [low, high]
LISTS = ("choice", "grid")  # the values themselves
KINDS = RANGES + LISTS

# Keys the sweep owns: each trial has its own run folder, and the budget sets its length.
OWNED = {
    "train.out_dir": "every trial trains in its own folder under the sweep's out_dir",
    "train.max_iters": "the sweep sets it from budget.steps",
}


@dataclass(frozen=True)
class Distribution:
    key: str  # a dotted experiment key, e.g. 'train.learning_rate'
    kind: str  # one of KINDS
    values: tuple[Any, ...]  # (low, high) for ranges, the options for choice and grid

    def corners(self) -> list[Any]:
        """The extreme values a trial can get: each is checked as a config before any trial."""
        if self.kind == "randint":
            low, high = self.values
            return [low, high - 1]
        return list(self.values)

    def to_tune(self):
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "randint":
            return tune.randint(*self.values)
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return tune.grid_search(list(self.values))

    def describe(self) -> str:
        return f"{self.kind}({', '.join(repr(v) for v in self.values)})"


def parse_space(raw: Any, source: str) -> dict[str, Distribution]:
    """`space:` from a sweep YAML -> {key: Distribution}; errors name the key and the file."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: space must be a mapping of config keys to distributions")
    return {key: parse_distribution(key, spec, source) for key, spec in raw.items()}


def parse_distribution(key: Any, spec: Any, source: str) -> Distribution:
    key = check_key(key, source, "space")
    where = f"{source}: space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where}: expected one distribution like {{loguniform: [1.0e-4, 1.0e-2]}} "
            f"or {{choice: [64, 128]}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(
            f"{where}: unknown distribution '{kind}'{_hint(kind, KINDS)}; use one of {list(KINDS)}"
        )
    if kind in LISTS:
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
        return Distribution(key, kind, tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"{where}: {kind} needs [low, high], got {args!r}")
    if kind == "randint":
        low, high = (_integer(v, where) for v in args)
        if low >= high:
            raise ConfigError(
                f"{where}: randint needs low < high (high is excluded), got [{low}, {high}]"
            )
        return Distribution(key, kind, (low, high))
    if not _takes_floats(key):
        raise ConfigError(
            f"{where}: {key} does not take fractions: use randint, choice or grid, not {kind}"
        )
    low, high = (_number(v, where) for v in args)
    if low >= high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < low, got low={low}")
    return Distribution(key, kind, (low, high))


def check_key(key: Any, source: str, where: str) -> str:
    """A dotted experiment key (`section.name`) that exists and that a sweep may set."""
    if not isinstance(key, str) or key.count(".") != 1:
        raise ConfigError(f"{source}: {where}: key {key!r} is not of the form section.name")
    section, name = key.split(".")
    if section not in SECTIONS:
        raise ConfigError(
            f"{source}: {where}.{key}: unknown section '{section}'{_hint(section, SECTIONS)}"
        )
    fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in fields:
        close = _hint(name, fields, prefix=f"{section}.")
        raise ConfigError(f"{source}: {where}.{key}: unknown key '{key}'{close}")
    if key in OWNED:
        raise ConfigError(f"{source}: {where}.{key}: not settable in a sweep: {OWNED[key]}")
    return key


def _takes_floats(key: str) -> bool:
    section, name = key.split(".")
    hint = typing.get_type_hints(SECTIONS[section])[name]
    return hint is float or float in typing.get_args(hint)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _integer(value: Any, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: randint needs integers, got {value!r}")
    return value


def _hint(word: str, known: typing.Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""
