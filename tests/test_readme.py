"""The README's commands stay true: every job, flag, make target, file and config override it
shows exists and parses. (The two main commands run for real: `make test` is this suite and
.ci/run runs `make demo`; training runs and clusters are too long to run here for every line.)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from raygpt.config import load_experiment

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def shell_commands() -> list[str]:
    """Every command line in the README's bash blocks (continuations joined, comments cut)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = shell_commands()
JOB_CALLS = [c for c in COMMANDS if re.search(r"\bjobs/\w+\.py", c)]


def words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # a quote spanning lines: fall back to plain splitting
        return command.split()


@cache
def job_help(script: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / script), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_readme_has_the_two_commands_first():
    quickstart = README[README.index("## Quickstart") :][:600]
    assert "make demo" in quickstart and "make test" in quickstart


@pytest.mark.parametrize("command", JOB_CALLS)
def test_every_job_and_flag_exists(command):
    parts = words(command)
    start = next(i for i, w in enumerate(parts) if re.fullmatch(r"jobs/\w+\.py", w))
    script, args = parts[start], parts[start + 1 :]
    assert (REPO / script).is_file(), script
    help_text = job_help(script)
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert flag in help_text, f"{script} has no {flag}"


@pytest.mark.parametrize("command", [c for c in JOB_CALLS if "--config" in c])
def test_every_config_and_override_loads(command):
    parts = words(command)
    config_at = parts.index("--config") if "--config" in parts else None
    config = parts[config_at + 1]
    if "$" in config or not (REPO / config).is_file() or "sweep" in config:
        pytest.skip(f"{config} is made by an earlier command or is a sweep")
    if "jobs/scaling.py" in command:  # a scaling study: its own YAML, every run checked
        from raygpt.tune.scaling_config import load_scaling

        load_scaling(REPO / config)
        return
    overrides = [
        p for p in parts[config_at + 2 :] if re.fullmatch(r"\w+\.\w+=\S+", p) and "$" not in p
    ]
    load_experiment(REPO / config, overrides)


def test_every_make_target_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    used = {w for c in COMMANDS for w in re.findall(r"\bmake (\w+)", c)}
    assert used and used <= targets, used - targets


def test_every_repository_file_it_names_exists():
    named = set(
        re.findall(
            r"(?<![\w/$.-])((?:configs|serve_apps|docs|bench|jobs|tests)/[\w./-]+\.(?:py|yaml|json|png)"
            r"|cluster\.yaml|Dockerfile)",
            README,
        )
    )
    made_later = {"configs/my_sweep.yaml", "configs/x.yaml"}
    missing = sorted(p for p in named - made_later if not (REPO / p).exists())
    assert len(named) > 15 and not missing, missing


def test_serve_run_targets_resolve():
    from serve_apps.app import build_app

    runs = [c for c in COMMANDS if re.search(r"\bserve run\b", c)]
    assert runs
    for command in runs:
        target = words(command)[words(command).index("run") + 1]
        if target.endswith(".yaml"):
            assert (REPO / target).is_file(), target
        else:
            assert target == "serve_apps.app:build_app" and callable(build_app)
