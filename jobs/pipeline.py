"""The whole path as one job: prepare data → train (Ray Train) → quantize → evaluate → serve.

    python jobs/pipeline.py --config configs/tiny_cpu.yaml
    ray job submit --address http://HEAD:8265 --runtime-env configs/runtime_env.yaml -- \
        python jobs/pipeline.py --config configs/code_assistant.yaml --serve-host 0.0.0.0

Every `section.key=value` overrides the experiment config. The Serve app takes the args of
serve_apps/serve_config.yaml with the INT8 checkpoint this run made; it keeps serving after
the job ends (Serve apps outlive their driver) unless --shutdown-serve.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from raygpt import storage
from raygpt.cli import JobParser, add_experiment_arguments, add_ray_arguments, run_cli
from raygpt.config import load_experiment
from raygpt.ray_runtime import init_ray
from raygpt.release.evaluation import comparison_table
from raygpt.release.int8 import REPORT, release_int8
from raygpt.train.launch import ensure_data, plan_training, run_training, summary

PROMPTS = ["def fibonacci(n):\n", "import os\n\n\ndef ", "class Stack:\n    def "]


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    add_experiment_arguments(parser)
    add_ray_arguments(parser)
    parser.add_argument(
        "--serve-config", default=None, help="default: serve_apps/serve_config.yaml"
    )
    parser.add_argument("--serve-host", default="127.0.0.1", help="0.0.0.0 to serve off-node")
    parser.add_argument("--serve-port", type=int, default=8000)
    parser.add_argument(
        "--serve-proxy-location", default="EveryNode", choices=["EveryNode", "HeadOnly"]
    )
    parser.add_argument("--no-serve", action="store_true", help="stop after the evaluation")
    parser.add_argument("--shutdown-serve", action="store_true", help="stop serving at the end")
    parser.add_argument("--max-tokens", type=int, default=80, help="per sample completion")
    args = parser.parse_args()

    from serve_apps.deploy import SERVE_CONFIG, app_args, complete, deploy

    started = time.perf_counter()
    config = load_experiment(args.config, args.overrides)
    plan = plan_training(config)  # every check that needs no workers, before Ray starts
    serve_args = app_args(args.serve_config or SERVE_CONFIG)
    init_ray(args.address, args.num_cpus)

    stage("1/5 data", f"{config.data.dataset} ({config.data.tokenizer} tokens)")
    ensure_data(plan)
    manifest = plan.manifest
    print(f"  {plan.data_dir}: {manifest.splits['train'].tokens:,} train tokens", flush=True)

    workers = config.scaling.num_workers
    stage("2/5 train", f"{workers} Ray Train worker(s), {config.train.max_iters} steps")
    result = run_training(plan)
    print(summary(result), flush=True)

    int8_dir = storage.join(result.run_dir, "int8")
    stage("3/5 quantize", f"INT8 weight-only → {int8_dir}")
    reports = release_int8(result.final_model, int8_dir, overwrite=True)

    stage("4/5 evaluate", "original vs INT8 on the same val windows")
    print(comparison_table(reports), flush=True)

    lines = [
        f"run dir:       {result.run_dir}   (metrics.jsonl, loss.png, final/, int8/)",
        f"eval report:   {storage.join(int8_dir, REPORT)}",
    ]
    if not args.no_serve:
        stage("5/5 serve", "Ray Serve: ingress + INT8 generator, continuous batching")
        serve_args.update(checkpoint=int8_dir, quantize="int8", model_name=config_name(args))
        url = deploy(serve_args, args.serve_host, args.serve_port, args.serve_proxy_location)
        print(f"  serving at {url}", flush=True)
        for seed, prompt in enumerate(PROMPTS):
            answer = complete(
                url, prompt, max_tokens=args.max_tokens, temperature=0.8, top_k=40, seed=seed
            )
            choice = answer["choices"][0]
            print(f"\n--- {prompt!r} → ({choice['finish_reason']})\n{prompt}{choice['text']}")
        if args.shutdown_serve:
            from ray import serve

            serve.shutdown()
            lines.append("service:       shut down (--shutdown-serve)")
        else:
            lines.append(f"service:       {url}  (curl {url}/health; `serve shutdown -y` stops it)")
    lines += [
        "next:",
        f"  sample:        python jobs/sample.py --checkpoint {int8_dir} --prompt 'def fibonacci(n):'",
        f"  serve again:   serve run serve_apps.app:build_app checkpoint={int8_dir}",
        "  on a cluster:  ray job submit --address http://HEAD:8265 --runtime-env "
        f"configs/runtime_env.yaml -- python jobs/pipeline.py --config {args.config}",
    ]
    print(f"\ndone in {time.perf_counter() - started:.0f} s", flush=True)
    print("\n".join(lines))


def stage(name: str, what: str) -> None:
    print(f"\n== [{name}] {what}", flush=True)


def config_name(args: argparse.Namespace) -> str:
    return Path(args.config).stem


if __name__ == "__main__":
    run_cli(main)
