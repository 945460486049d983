"""HumanEval pass@k of raygpt checkpoints or of any OpenAI-compatible service, on Ray.

    python jobs/eval_code.py --checkpoint .cache/models/smollm2-135m-instruct --int8
    python jobs/eval_code.py --checkpoint runs/demo/final --checkpoint runs/demo/int8 --limit 40
    python jobs/eval_code.py --base-url http://127.0.0.1:8000 --samples 20 --temperature 0.8

Completions come from the generation engine in Ray actors (checkpoints) or from the service
(--base-url); every program runs in a sandboxed child process, spread over Ray tasks. Greedy
by default (pass@1); with --samples n and a temperature, pass@1 and pass@10 by the unbiased
estimator. Writes humaneval.json (every completion and its outcome) and, when several models
are compared, humaneval.png, to --out.
"""

from __future__ import annotations

import os

from raygpt import storage
from raygpt.checkpoint import checkpoint_format
from raygpt.cli import JobParser, add_ray_arguments, run_cli
from raygpt.errors import RaygptError
from raygpt.ray_runtime import cluster_cpus, init_ray
from raygpt.release.code_eval import CodeEvalOptions, EngineSource, ServiceSource, run_code_eval
from raygpt.release.code_report import plot_pass_at_1, results_table, write_results
from raygpt.release.sandbox import Limits


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", help="repeat to compare")
    parser.add_argument("--int8", action="store_true", help="each checkpoint INT8 too")
    parser.add_argument("--base-url", help="an OpenAI-compatible service instead")
    parser.add_argument("--model", help="the service's model (default: its first)")
    parser.add_argument("--api-key-env", default="RAYGPT_API_KEY", help="the service's key")
    parser.add_argument("--limit", type=int, help="the first N of the 164 problems")
    parser.add_argument("--samples", type=int, default=1, help="completions per problem")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--mode", default="auto", choices=["auto", "completion", "chat"])
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    parser.add_argument("--actors", type=int, default=1, help="generation actors per model")
    parser.add_argument("--out", default="runs/humaneval")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_ray_arguments(parser)
    args = parser.parse_args()
    if bool(args.checkpoint) == bool(args.base_url):
        raise RaygptError("give --checkpoint (one or more) or --base-url, not both")
    if args.samples < 1 or (args.samples > 1 and args.temperature == 0):
        raise RaygptError("--samples > 1 needs a --temperature above 0 (greedy is one sample)")

    for checkpoint in args.checkpoint or []:
        checkpoint_format(checkpoint)  # a wrong path fails here, before Ray starts
    storage.prepare_output(args.out, args.overwrite)  # refused now, not after the run
    init_ray(args.address, args.num_cpus, args.verbose)
    cpus = max(1.0, (cluster_cpus() - 1) / args.actors)  # one CPU left for the executions
    sources = []
    for checkpoint in args.checkpoint or []:
        sources.append(EngineSource(checkpoint, actors=args.actors, cpus_per_actor=cpus))
        if args.int8:
            sources.append(EngineSource(checkpoint, True, args.actors, cpus))
    if args.base_url:
        key = os.environ.get(args.api_key_env)
        sources.append(ServiceSource(args.base_url, args.model, key))
    options = CodeEvalOptions(
        limit=args.limit,
        samples=args.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        mode=args.mode,
        limits=Limits(timeout_s=args.timeout),
    )
    reports = []
    for source in sources:
        print(f"HumanEval: {source.name} ...", flush=True)
        report = run_code_eval(source, options, cluster_cpus(), say=lambda x: print(x, flush=True))
        reports.append(report)
    print(results_table(reports))
    results = storage.join(args.out, "humaneval.json")
    write_results(results, reports)
    lines = [f"results:  {results}"]
    if len(reports) > 1:
        chart = storage.join(args.out, "humaneval.png")
        plot_pass_at_1(chart, reports)
        lines.append(f"chart:    {chart}")
    print("\n".join(lines))


if __name__ == "__main__":
    run_cli(main)
