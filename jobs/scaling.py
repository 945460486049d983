"""Measure scaling laws with Ray Tune: IsoFLOP runs, Chinchilla's fits, a compute-optimal model.

    python jobs/scaling.py --config configs/scaling_cpu.yaml
    python jobs/scaling.py --config configs/scaling_cpu.yaml --fit-only    # refit, no Ray

For each compute budget in the YAML, models of the size rule each train on the tokens the
budget buys (one Ray Tune trial each, a Ray Train run); then the fits (approach 2: IsoFLOP
parabolas and power laws N_opt ∝ C^a, D_opt ∝ C^b; approach 3: L(N, D) = E + A/N^alpha +
B/D^beta), bootstrap intervals and a recommendation land in the study's out_dir: scaling.md,
scaling.json, scaling.png. Re-running the same command resumes an interrupted study.
"""

from __future__ import annotations

from raygpt.cli import JobParser, add_ray_arguments, run_cli
from raygpt.tune.scaling_config import load_scaling
from raygpt.tune.scaling_study import analyse, exit_code, run_study, summary
from raygpt.tune.sweep import check_resume


def main() -> int:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="scaling study YAML")
    parser.add_argument(
        "--fit-only", action="store_true", help="redo the fits from the runs on disk (no Ray)"
    )
    add_ray_arguments(parser)
    args = parser.parse_args()

    study = load_scaling(args.config)  # every run's model, budget and data, before Ray starts
    check_resume(study.sweep)  # a different study in the same out_dir fails here
    if args.fit_only:
        outcome = analyse(study)
    else:
        from raygpt.ray_runtime import init_ray

        init_ray(args.address, args.num_cpus, args.verbose)
        outcome = run_study(study)
    print(summary(outcome))
    return exit_code(outcome)


if __name__ == "__main__":
    run_cli(main)
