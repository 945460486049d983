"""Sweep hyperparameters with Ray Tune: every trial a Ray Train run, ASHA stopping the weak.

    python jobs/tune.py --config configs/sweep_tiny_cpu.yaml

The sweep YAML names a base experiment, a search space over its keys, a budget and the early
stopping. Everything is checked before Ray starts. Results land in the sweep's out_dir: a
table of trials, best.yaml (train it with jobs/train.py) and a plot. Re-running the same
command on the same out_dir resumes an interrupted sweep.
"""

from __future__ import annotations

from raygpt.cli import JobParser, add_ray_arguments, run_cli
from raygpt.ray_runtime import init_ray
from raygpt.tune.sweep import check_resume, exit_code, run_sweep, summary
from raygpt.tune.sweep_config import load_sweep


def main() -> int:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="sweep YAML")
    add_ray_arguments(parser)
    args = parser.parse_args()

    sweep = load_sweep(args.config)  # the space, the base config, every trial's extremes
    check_resume(sweep)  # a different sweep in the same out_dir fails here, before Ray
    init_ray(args.address, args.num_cpus, args.verbose)
    outcome = run_sweep(sweep)
    print(summary(outcome))
    return exit_code(outcome)


if __name__ == "__main__":
    run_cli(main)
