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
import ast
import time
from pathlib import Path

from raygpt import storage
from raygpt.cli import JobParser, add_experiment_arguments, add_ray_arguments, run_cli
from raygpt.config import load_experiment
from raygpt.ray_runtime import init_ray
from raygpt.release.evaluation import comparison_table
from raygpt.release.int8 import REPORT, release_int8
from raygpt.train.launch import ensure_data, plan_training, run_training, summary

# Code as an editor sends it for completion: the cursor inside a body, a few tokens typed.
CODE_PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n',
    'def read_lines(path):\n    """The lines of the text file at path, without their newlines."""\n'
    "    with open(path) as f:\n        return",
    'class Stack:\n    """A last-in, first-out stack."""\n\n    def __init__(self):\n'
    "        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n"
    "    def pop(self):\n        ",
]
# HumanEval's stop sequences (Chen et al. 2021), where the next top-level statement (or a
# method, or the end of a markdown code block) would begin.
CODE_STOPS = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\n```", "\n    def "]
CHAT_QUESTION = "Write a Python function that reverses the order of the words in a sentence."


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
    parser.add_argument("--max-tokens", type=int, default=96, help="per sample completion")
    args = parser.parse_args()

    from serve_apps.deploy import SERVE_CONFIG, app_args, deploy

    started = time.perf_counter()
    config = load_experiment(args.config, args.overrides)
    plan = plan_training(config)  # every check that needs no workers, before Ray starts
    serve_args = app_args(args.serve_config or SERVE_CONFIG)
    init_ray(args.address, args.num_cpus, args.verbose)

    stage(
        "1/5 data",
        f"{config.data.dataset} in {Path(config.data.tokenizer).name}'s tokens (Ray Data)",
    )
    ensure_data(plan)
    manifest = plan.manifest
    print(f"  {plan.data_dir}: {manifest.splits['train'].tokens:,} train tokens", flush=True)

    stage("2/5 train", training_story(plan))
    result = run_training(plan)
    print(summary(result), flush=True)

    int8_dir = storage.join(result.run_dir, "int8")
    stage("3/5 quantize", f"INT8 (int8 weights per channel, int8 GEMM on CPU) → {int8_dir}")
    reports = release_int8(result.final_model, int8_dir, windows=16, overwrite=True)

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
        print(f"  serving at {url}, playground at {url}/playground", flush=True)
        show_assistant(url, args.max_tokens)
        if args.shutdown_serve:
            from ray import serve

            serve.delete("raygpt")  # this job's app only; other apps keep serving
            lines.append(
                "service:       shut down (--shutdown-serve); `make serve` serves it again, "
                f"playground at {url}/playground"
            )
        else:
            lines += [
                f"service:       {url}  (curl {url}/health; `serve shutdown -y` stops it)",
                f"playground:    {url}/playground",
            ]
    lines += [
        "next:",
        f"  sample:        python jobs/sample.py --checkpoint {int8_dir} --prompt 'def fibonacci(n):'",
        f"  serve again:   serve run serve_apps.app:build_app checkpoint={int8_dir}",
        "  on a cluster:  ray job submit --address http://HEAD:8265 --runtime-env "
        f"configs/runtime_env.yaml -- python jobs/pipeline.py --config {args.config}",
    ]
    print(f"\ndone in {time.perf_counter() - started:.0f} s", flush=True)
    print("\n".join(lines))


def training_story(plan) -> str:
    """What stage 2 does, in a line: fine-tuning what, or training what from scratch."""
    config, workers = plan.config, plan.config.scaling.num_workers
    how = f"{workers} Ray Train worker{'s' if workers > 1 else ''}"
    if workers > 1:
        how += f" ({config.scaling.strategy.upper()})"
    steps = f"{config.train.max_iters} steps, {config.model.block_size}-token windows"
    if plan.resuming:
        return f"resume {plan.run_dir} with {how}, to {steps}"
    if plan.init_weights:
        return f"fine-tune {Path(plan.init_weights).name} with {how}, {steps}"
    m = config.model
    return f"a {m.n_layer}-layer, {m.n_embd}-wide GPT from scratch with {how}, {steps}"


def show_assistant(url: str, max_tokens: int) -> None:
    """Real requests over HTTP: greedy code completions (each checked to parse as Python),
    and one chat answer when the model has a chat template. A request the service refuses
    (a prompt longer than a tiny model's context) is shown with the service's reason."""
    from raygpt.inference.http_client import ServiceError
    from serve_apps.deploy import chat, complete, describe

    for i, prompt in enumerate(CODE_PROMPTS, 1):
        heading = f"\n--- completion {i}/{len(CODE_PROMPTS)}"
        try:
            answer = complete(url, prompt, max_tokens=max_tokens, temperature=0, stop=CODE_STOPS)
        except ServiceError as err:
            print(f"{heading}: not answered: {err}", flush=True)
            continue
        choice, usage = answer["choices"][0], answer["usage"]
        code = prompt + choice["text"]
        verdict = "parses as Python" if parses(code) else "does NOT parse as Python"
        print(
            f"{heading}: {usage['completion_tokens']} tokens, {choice['finish_reason']}, "
            f"{verdict}\n{code.rstrip()}",
            flush=True,
        )
    if not describe(url)["chat"]:
        print("\n--- chat: skipped (this model has no chat template)", flush=True)
        return
    messages = [{"role": "user", "content": CHAT_QUESTION}]
    try:
        answer = chat(url, messages, max_tokens=2 * max_tokens, temperature=0)
    except ServiceError as err:
        print(f"\n--- chat: not answered: {err}", flush=True)
        return
    choice = answer["choices"][0]
    print(
        f"\n--- chat: {CHAT_QUESTION!r} → {answer['usage']['completion_tokens']} tokens, "
        f"{choice['finish_reason']}\n{choice['message']['content'].strip()}",
        flush=True,
    )


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def stage(name: str, what: str) -> None:
    print(f"\n== [{name}] {what}", flush=True)


def config_name(args: argparse.Namespace) -> str:
    return Path(args.config).stem


if __name__ == "__main__":
    run_cli(main)
