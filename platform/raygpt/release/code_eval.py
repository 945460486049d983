"""HumanEval on Ray: completions from the generation engine in Ray actors (or from any
OpenAI-compatible service), executed as Ray tasks, each program in a sandboxed child process.

    run_code_eval(EngineSource(checkpoint), options)      # a raygpt checkpoint
    run_code_eval(ServiceSource(base_url, model), options)   # the raygpt service, vLLM, ...

Both sources see the same prompts (the problem's prompt for a base model, the chat template
for a chat model) with the same sampling, so the same model gives the same greedy pass@1
through either. Generation and execution are timed apart.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from raygpt import storage
from raygpt.errors import RaygptError
from raygpt.inference.http_client import ServiceClient
from raygpt.release.humaneval import (
    STOP_SEQUENCES,
    Problem,
    chat_messages,
    code_from_answer,
    load_problems,
    mean_pass_at_k,
    program,
    truncate,
)
from raygpt.release.sandbox import OUTCOMES, PASSED, Execution, Limits, run_untrusted

COMPLETION, CHAT = "completion", "chat"


@dataclass(frozen=True)
class CodeEvalOptions:
    limit: int | None = None  # the first N problems (None: all 164)
    samples: int = 1  # completions per problem
    temperature: float = 0.0  # 0: greedy (then one sample is all there is)
    top_p: float = 0.95
    max_tokens: int = 256
    mode: str = "auto"  # completion | chat | auto (chat when the model has a chat template)
    limits: Limits = field(default_factory=Limits)
    seed: int = 1234


@dataclass
class Sample:
    """One completion of one problem and what running it did."""

    text: str  # what the model wrote
    completion: str  # the code spliced after the prompt
    outcome: str = ""
    detail: str = ""


@dataclass
class ProblemResult:
    task_id: str
    samples: list[Sample]

    @property
    def correct(self) -> int:
        return sum(s.outcome == PASSED for s in self.samples)


@dataclass
class CodeEvalReport:
    name: str
    mode: str
    options: dict[str, Any]
    problems: list[ProblemResult]
    generate_s: float
    execute_s: float

    @property
    def counts(self) -> list[tuple[int, int]]:
        return [(len(p.samples), p.correct) for p in self.problems]

    def pass_at(self, k: int) -> float | None:
        return mean_pass_at_k(self.counts, k)

    def outcomes(self) -> dict[str, int]:
        tally = dict.fromkeys(OUTCOMES, 0)
        for p in self.problems:
            for s in p.samples:
                tally[s.outcome] += 1
        return tally

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "options": self.options,
            "pass@1": self.pass_at(1),
            "pass@10": self.pass_at(10),
            "outcomes": self.outcomes(),
            "generate_s": self.generate_s,
            "execute_s": self.execute_s,
            "problems": [
                {
                    "task_id": p.task_id,
                    "correct": p.correct,
                    "samples": [asdict(s) for s in p.samples],
                }
                for p in self.problems
            ],
        }


# -- where completions come from ------------------------------------------------------------


@dataclass(frozen=True)
class GenerationJob:
    """One completion to make: a problem, its sample index, and how to sample it."""

    key: tuple[str, int]
    prompt: str | None  # completion mode
    messages: list[dict[str, str]] | None  # chat mode
    stop: tuple[str, ...]
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None


def checkpoint_label(checkpoint: str) -> str:
    """A table's name for a checkpoint: a run's final/ or step_000010/ says which run."""
    name = storage.name_of(checkpoint)
    if name in ("final", "int8") or name.startswith("step_"):
        return f"{storage.name_of(storage.parent_of(checkpoint))}/{name}"
    return name


ANSWER_FLOOR = 64  # tokens: below this, a solution rarely fits, so the prompt's start goes


def fit_context(ids: list[int], max_tokens: int, context: int) -> tuple[list[int], int]:
    """The prompt whole and the answer in the room left; only when that room is under
    ANSWER_FLOOR (or the prompt alone overflows) does the prompt lose its start. A model
    with a short context (fine-tuned at 512) then still sees each problem's instructions."""
    floor = max(1, min(max_tokens, ANSWER_FLOOR, context - 1))
    budget = min(max_tokens, context - len(ids))
    if budget >= floor:
        return ids, budget
    return ids[-(context - floor) :], floor


class EngineSource:
    """A raygpt checkpoint, served by the generation engine inside Ray actors (one per
    `actors`, each batching its share of the requests), loaded as the service loads it."""

    def __init__(
        self,
        checkpoint: str,
        quantize: bool = False,
        actors: int = 1,
        cpus_per_actor: float = 1.0,
        name: str | None = None,
        max_context: int = 1024,
    ) -> None:
        self.checkpoint, self.quantize = checkpoint, quantize
        self.actors, self.cpus_per_actor = actors, cpus_per_actor
        self.name = name or checkpoint_label(checkpoint) + (" int8" if quantize else "")
        self.max_context = max_context
        self._chat = None

    def has_chat_template(self) -> bool:
        from raygpt.checkpoint import checkpoint_format, load_model, read_meta

        if self._chat is None:  # a raygpt checkpoint's metadata says; another is converted
            if checkpoint_format(self.checkpoint) == "raygpt":
                meta = read_meta(self.checkpoint)
            else:
                meta = load_model(self.checkpoint)[1]
            self._chat = bool(meta.chat_template)
        return self._chat

    def generate(self, jobs: list[GenerationJob]) -> dict[tuple[str, int], str]:
        import ray

        Actor = ray.remote(num_cpus=self.cpus_per_actor)(EngineActor)
        actors = [
            Actor.remote(self.checkpoint, self.quantize, self.cpus_per_actor, self.max_context)
            for _ in range(self.actors)
        ]
        shares = [jobs[i :: len(actors)] for i in range(len(actors))]
        try:
            texts = ray.get([a.run.remote(share) for a, share in zip(actors, shares, strict=True)])
        finally:
            for actor in actors:
                ray.kill(actor)
        return {key: text for part in texts for key, text in part.items()}


class EngineActor:
    """A GenerationEngine over one checkpoint, in a Ray actor: every job of its share
    submitted at once, so continuous batching packs them into the engine's slots."""

    def __init__(self, checkpoint: str, quantize: bool, cpus: float, max_context: int) -> None:
        import torch

        from raygpt.device import cpu_threads, pick_device
        from raygpt.inference.chat import template_tokens
        from raygpt.inference.engine import GenerationEngine
        from raygpt.inference.load import checkpoint_tokenizer, load_for_serving

        device = pick_device("auto")
        if device.type == "cpu":  # a local Ray counts more CPUs than the machine's cores
            torch.set_num_threads(min(cpu_threads(cpus), os.cpu_count() or 1))
        model, meta = load_for_serving(checkpoint, device, int8=quantize)
        self.meta, self.tokenizer = meta, checkpoint_tokenizer(meta)
        self.template_tokens = template_tokens(meta.special_tokens or {}, self.tokenizer.decode)
        self.engine = GenerationEngine(
            model,
            self.tokenizer,
            max_slots=16,
            max_queue=1 << 20,  # a run submits its whole share at once
            max_context=max_context,
            compile_decode=True,
        )

    def run(self, jobs: list[GenerationJob]) -> dict[tuple[str, int], str]:
        from raygpt.inference.chat import ChatMessage, render_chat
        from raygpt.inference.engine import GenerationRequest

        texts: dict[tuple[str, int], list[str]] = {job.key: [] for job in jobs}
        done: set[tuple[str, int]] = set()
        for job in jobs:
            if job.messages is not None:
                messages = [ChatMessage(m["role"], m["content"]) for m in job.messages]
                prompt = render_chat(self.meta.chat_template, messages, self.template_tokens)
            else:
                prompt = job.prompt
            ids, max_tokens = fit_context(
                self.tokenizer.encode(prompt), job.max_tokens, self.engine.block_size
            )
            request = GenerationRequest(
                tuple(ids),
                max_tokens,
                temperature=job.temperature,
                top_p=job.top_p,
                seed=job.seed,
                stop=job.stop,
            )

            def collect(update, key=job.key):
                texts[key].append(update.text)
                if update.finish_reason:
                    done.add(key)

            self.engine.submit(request, collect)
        while len(done) < len(jobs):
            self.engine.step()
        return {key: "".join(parts) for key, parts in texts.items()}


class ServiceSource:
    """Any OpenAI-compatible service (raygpt's, vLLM's, ...): /v1/completions in completion
    mode, /v1/chat/completions in chat mode, `concurrency` requests in flight."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        chat: bool | None = None,
        name: str | None = None,
    ) -> None:
        self.client = ServiceClient(base_url, api_key)
        self.concurrency = concurrency
        self.model = model or self.client.get("/v1/models")["data"][0]["id"]
        self.name = name or f"{self.model} @ {self.client.base_url}"
        self._chat = chat

    def has_chat_template(self) -> bool:
        if self._chat is None:  # raygpt's service says so; another one is asked for chat
            self._chat = bool(self.client.get("/").get("chat", True))
        return self._chat

    def generate(self, jobs: list[GenerationJob]) -> dict[tuple[str, int], str]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            texts = list(pool.map(self._one, jobs))
        return {job.key: text for job, text in zip(jobs, texts, strict=True)}

    def _one(self, job: GenerationJob) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": job.max_tokens,
            "temperature": job.temperature,
            "top_p": job.top_p,
        }
        if job.seed is not None:
            body["seed"] = job.seed
        if job.stop:
            body["stop"] = list(job.stop)
        if job.messages is not None:
            answer = self.client.post("/v1/chat/completions", {**body, "messages": job.messages})
            return answer["choices"][0]["message"]["content"] or ""
        answer = self.client.post("/v1/completions", {**body, "prompt": job.prompt})
        return answer["choices"][0]["text"]


# -- running it -----------------------------------------------------------------------------


def execute_all(programs: list[str], limits: Limits, chunks: int) -> list[Execution]:
    """Every program in a sandboxed child process, the work split into `chunks` Ray tasks."""
    import ray

    @ray.remote(num_cpus=1)
    def execute(batch: list[str]) -> list[Execution]:
        return [run_untrusted(source, limits) for source in batch]

    size = max(1, math.ceil(len(programs) / max(1, chunks)))
    parts = [programs[i : i + size] for i in range(0, len(programs), size)]
    return [e for part in ray.get([execute.remote(p) for p in parts]) for e in part]


def run_code_eval(
    source, options: CodeEvalOptions, execution_tasks: int = 2, say=None
) -> CodeEvalReport:
    """HumanEval through `source` (EngineSource or ServiceSource), executed on Ray; `say`
    (print, for a job) hears how it goes."""
    say = say or (lambda line: None)
    mode = options.mode
    if mode == "auto":
        mode = CHAT if source.has_chat_template() else COMPLETION
    if mode not in (CHAT, COMPLETION):
        raise RaygptError(f"mode: {mode!r} is not one of auto, completion, chat")
    samples = 1 if options.temperature == 0 else options.samples
    problems = load_problems(options.limit)
    jobs = [generation_job(p, i, mode, options) for p in problems for i in range(samples)]

    say(f"  {len(jobs)} completions of {len(problems)} problems ({mode} prompts) ...")
    started = time.perf_counter()
    texts = source.generate(jobs)
    generated = time.perf_counter()
    say(f"  made in {generated - started:.0f} s; running them in the sandbox ...")
    results = []
    for problem in problems:
        made = [texts[(problem.task_id, i)] for i in range(samples)]
        results.append(
            ProblemResult(
                problem.task_id, [Sample(t, completion_of(t, problem, mode)) for t in made]
            )
        )
    everything = [(p, s) for p, r in zip(problems, results, strict=True) for s in r.samples]
    executions = execute_all(
        [program(p, s.completion) for p, s in everything], options.limits, execution_tasks
    )
    for (_, sample), execution in zip(everything, executions, strict=True):
        sample.outcome, sample.detail = execution.outcome, execution.detail
    finished = time.perf_counter()
    settings = asdict(options)
    settings.update(samples=samples, problems=len(problems))
    return CodeEvalReport(
        source.name, mode, settings, results, generated - started, finished - generated
    )


def generation_job(
    problem: Problem, index: int, mode: str, options: CodeEvalOptions
) -> GenerationJob:
    chat = mode == CHAT
    seed = (
        None
        if options.temperature == 0
        else options.seed + 1000 * index + int(problem.task_id.split("/")[1])
    )
    return GenerationJob(
        key=(problem.task_id, index),
        prompt=None if chat else problem.prompt,
        messages=chat_messages(problem) if chat else None,
        stop=() if chat else STOP_SEQUENCES,  # a chat answer ends at its end-of-turn token
        temperature=options.temperature,
        top_p=options.top_p,
        max_tokens=options.max_tokens,
        seed=seed,
    )


def completion_of(text: str, problem: Problem, mode: str) -> str:
    return code_from_answer(text, problem) if mode == CHAT else truncate(text)
