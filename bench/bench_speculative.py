"""Speculative decoding side by side: off vs prompt lookup vs a draft model, one run.

The engine as the service runs it (compiled decode steps, INT8 by default), greedy, on two
sets of code prompts in the model's chat template: HumanEval's first problems (write a
function), and "edit this file" requests on stdlib functions, whose answers repeat their
input. Each set runs at batch 1 (one request at a time) and with all its requests at once,
once per method on the same engine settings; every method must give the tokens of `off`.

    python bench/bench_speculative.py --checkpoint .cache/models/smollm2-135m-instruct
    python bench/bench_speculative.py --checkpoint ... --methods off,ngram,self:10 --k 4
"""

from __future__ import annotations

import inspect
import platform
import textwrap
import time
from dataclasses import dataclass

import torch

from raygpt.cli import JobParser
from raygpt.inference.chat import ChatMessage, render_chat, template_tokens
from raygpt.inference.engine import GenerationEngine, GenerationRequest, GenerationUpdate
from raygpt.inference.load import checkpoint_tokenizer, load_draft, load_for_serving
from raygpt.inference.speculation import SpeculationConfig
from raygpt.release.humaneval import chat_messages, load_problems

EDIT_INSTRUCTION = (
    "Rename the function's parameters to longer, clearer names and return the whole "
    "function, changed, in one Python code block.\n\n```python\n{code}```"
)


def edit_sources(count: int) -> list[str]:
    """Short stdlib functions (present wherever Python is) for the edit requests."""
    import base64
    import difflib
    import fnmatch
    import html
    import shlex
    import statistics
    import textwrap as tw

    functions = [
        tw.indent, fnmatch.filter, html.escape, base64.b64encode, shlex.split,
        statistics.median, difflib.get_close_matches, tw.dedent,
    ]  # fmt: skip
    return [inspect.getsource(f) for f in functions[:count]]


@dataclass
class Run:
    tokens: list[list[int]]
    seconds: float
    proposed: int
    accepted: int
    steps: int

    @property
    def made(self) -> int:
        return sum(len(t) for t in self.tokens)


def run(engine: GenerationEngine, prompts: list[list[int]], max_tokens: int, together: bool):
    """Greedy completions of every prompt: all at once, or one after another."""
    before = engine.stats()
    results: list[list[GenerationUpdate]] = [[] for _ in prompts]
    start = time.perf_counter()
    batches = [list(range(len(prompts)))] if together else [[i] for i in range(len(prompts))]
    for batch in batches:
        for i in batch:
            request = GenerationRequest(tuple(prompts[i]), max_tokens, temperature=0)
            engine.submit(request, results[i].append)
        while not all(results[i] and results[i][-1].finish_reason for i in batch):
            engine.step()
    seconds = time.perf_counter() - start
    after = engine.stats()
    return Run(
        [[t for u in updates for t in u.token_ids] for updates in results],
        seconds,
        after.tokens_proposed - before.tokens_proposed,
        after.tokens_accepted - before.tokens_accepted,
        after.steps - before.steps,
    )


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the target model")
    parser.add_argument("--quantize", choices=["int8", "none"], default="int8")
    parser.add_argument(
        "--methods", default="off,ngram,self:10", help="off, ngram, self:N, or a draft checkpoint"
    )
    parser.add_argument("--k", type=int, default=4, help="tokens proposed a row per step")
    parser.add_argument("--prompts", type=int, default=8, help="requests in each set")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    int8 = args.quantize == "int8"
    model, meta = load_for_serving(args.checkpoint, "cpu", int8=int8)
    tokenizer = checkpoint_tokenizer(meta)
    specials = template_tokens(meta.special_tokens or {}, tokenizer.decode)

    def chat(content: str) -> list[int]:
        text = render_chat(meta.chat_template, [ChatMessage("user", content)], specials)
        return tokenizer.encode(text)

    sets = {
        "humaneval": [chat(chat_messages(p)[0]["content"]) for p in load_problems(args.prompts)],
        "edit file": [chat(EDIT_INSTRUCTION.format(code=c)) for c in edit_sources(args.prompts)],
    }
    context = max(len(p) for prompts in sets.values() for p in prompts) + args.max_tokens + 8
    engines = {}
    for method in args.methods.split(","):
        draft = None
        if method == "off":
            speculation = SpeculationConfig()
        elif method == "ngram":
            speculation = SpeculationConfig("ngram", k=args.k)
        else:
            speculation = SpeculationConfig("draft", k=args.k, draft=method)
            draft = load_draft(method, model, meta, "cpu", int8)
        engines[method] = GenerationEngine(
            model,
            tokenizer,
            max_slots=args.prompts,
            max_context=context,
            compile_decode=True,
            speculation=speculation,
            draft_model=draft,
        )
        run(engines[method], sets["humaneval"][:2], 8, together=True)  # compiles its steps

    name = args.checkpoint.rstrip("/").split("/")[-1]
    print(
        f"\n{name}, {'INT8' if int8 else 'fp32'}, greedy, {args.max_tokens} tokens max, "
        f"k={args.k}, compiled decode steps, {args.threads} threads, CPU {platform.machine()}, "
        f"torch {torch.__version__}"
    )
    print(
        f"{'prompts':>10} {'batch':>5} {'method':>8} {'tokens':>6} {'seconds':>8} "
        f"{'tok/s':>7} {'vs off':>7} {'accepted':>9} {'tok/step':>8} {'same':>5}"
    )
    for set_name, prompts in sets.items():
        for together in (False, True):
            baseline = None
            for method, engine in engines.items():
                result = run(engine, prompts, args.max_tokens, together)
                baseline = baseline or result
                rate = result.made / result.seconds
                accepted = f"{result.accepted / result.proposed:.0%}" if result.proposed else "-"
                per_step = result.made / result.steps / (len(prompts) if together else 1)
                print(
                    f"{set_name:>10} {len(prompts) if together else 1:>5} {method:>8} "
                    f"{result.made:>6} {result.seconds:>8.1f} {rate:>7.1f} "
                    f"{rate / (baseline.made / baseline.seconds):>6.2f}x {accepted:>9} "
                    f"{per_step:>8.2f} {'yes' if result.tokens == baseline.tokens else 'NO':>5}"
                )
    print(
        "tok/step: tokens a request gains per engine step (1.00 without speculation); "
        "accepted: kept / proposed speculated tokens; same: the tokens of `off`"
    )
    print(textwrap.fill(f"edit prompts: {EDIT_INSTRUCTION.splitlines()[0]}", 100))


if __name__ == "__main__":
    main()
