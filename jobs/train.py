"""Train a GPT with Ray Train (DDP or FSDP), locally or with `ray job submit`.

    python jobs/train.py --config configs/tiny_cpu.yaml
    python jobs/train.py --config configs/tiny_cpu.yaml scaling.num_workers=2 train.max_iters=100
    python jobs/train.py --config nanoGPT/config/train_shakespeare_char.py data.dataset=data/shakespeare

Every `section.key=value` overrides the config. Re-running with the same train.out_dir
resumes from its latest checkpoint.
"""

from __future__ import annotations

from raygpt.cli import JobParser, add_experiment_arguments, add_ray_arguments, run_cli
from raygpt.config import load_experiment
from raygpt.ray_runtime import init_ray
from raygpt.train.launch import plan_training, run_training, summary


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    add_experiment_arguments(parser)
    add_ray_arguments(parser)
    args = parser.parse_args()

    config = load_experiment(args.config, args.overrides)
    plan = plan_training(config)  # every check that needs no workers, before Ray starts
    init_ray(args.address, args.num_cpus, args.verbose)
    print(summary(run_training(plan)))


if __name__ == "__main__":
    run_cli(main)
