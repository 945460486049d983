"""Ray Tune sweeps on a real local Ray: ASHA, resume after an interruption, results, bad spaces.

One small sweep runs for the whole module, the way a user runs it: jobs/tune.py is started,
interrupted (SIGINT, as Ctrl-C) once a trial has ended, and started again to finish. Four trials
of a tiny GPT, two at a time, grid-ordered so the two good learning rates run first: the two
tiny ones then reach ASHA's first rung behind them and must be stopped there, whatever the
timing. The sweep's processes join the session's Ray (--address) instead of starting their own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from raygpt.config import load_experiment
from raygpt.errors import ConfigError
from raygpt.train.run_log import read_metrics
from raygpt.tune.sweep import check_resume
from raygpt.tune.sweep_config import load_sweep

from .conftest import REPO, run_job

EXPERIMENT = {
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "bias": False},
    "data": {"dataset": "stdlib", "tokenizer": "byte"},
    "train": {
        "out_dir": "runs/unused",
        "max_iters": 100,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "min_lr": 3e-4,
        "warmup_iters": 2,
        "eval_interval": 8,  # = log_interval: every report is an evaluation (reports are slow)
        "eval_iters": 2,
        "log_interval": 8,
        "shuffle_buffer": 64,
        "dtype": "float32",
    },
    "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
}
GOOD, TINY = [3e-3, 2e-3], [1e-5, 2e-5]
STEPS = 16


def write_sweep(directory: Path, dataset: str = "stdlib", **changes) -> Path:
    experiment = json.loads(json.dumps(EXPERIMENT))
    experiment["data"]["dataset"] = str(dataset)
    (directory / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    sweep = {
        "experiment": "experiment.yaml",
        "out_dir": str(directory / "sweep"),
        "space": {"train.learning_rate": {"grid": GOOD + TINY}},
        "budget": {"steps": STEPS},
        "asha": {"grace_period": 8, "reduction_factor": 2},
        "resources": {"trial_cpus": 0.25, "max_concurrent_trials": 2},
        **changes,
    }
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


# --- bad sweeps fail before Ray starts ------------------------------------------------------


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"train.learnin_rate": {"uniform": [0.1, 0.2]}},
            "space.train.learnin_rate: unknown key 'train.learnin_rate' "
            "(did you mean 'train.learning_rate'?)",
        ),
        ({"optim.lr": {"uniform": [0.1, 0.2]}}, "space.optim.lr: unknown section 'optim'"),
        ({"model.n_embd": {"choice": []}}, "space.model.n_embd: choice needs a non-empty list"),
        (
            {"train.learning_rate": {"uniform": [0.01, 0.001]}},
            "space.train.learning_rate: uniform needs low < high, got [0.01, 0.001]",
        ),
        (
            {"train.learning_rate": {"loguniform": [0, 0.01]}},
            "space.train.learning_rate: loguniform needs 0 < low, got low=0.0",
        ),
        (
            {"train.learning_rate": {"normal": [0.0, 1.0]}},
            "space.train.learning_rate: unknown distribution 'normal'",
        ),
        ({"model.n_layer": {"randint": [4, 4]}}, "space.model.n_layer: randint needs low < high"),
        ({"model.n_layer": {"uniform": [1, 4]}}, "model.n_layer does not take fractions"),
        ({"train.out_dir": {"choice": ["a", "b"]}}, "space.train.out_dir: not settable"),
        # every choice is built as a real config: 33 is not divisible by n_head=2
        ({"model.n_embd": {"choice": [32, 33]}}, "model.n_embd: n_embd=33 is not divisible"),
        ({"train.batch_size": {"choice": [8, "big"]}}, "train.batch_size: expected an integer"),
    ],
)
def test_a_bad_search_space_is_one_clear_error(tmp_path, space, message):
    path = write_sweep(tmp_path, space=space)
    with pytest.raises(ConfigError) as error:
        load_sweep(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_sample": 4}, "unknown key 'num_sample' (did you mean 'num_samples'?)"),
        ({"asha": {"grace_period": 32}}, "asha.grace_period: 32 steps is more than the budget"),
        ({"asha": {"grace_period": 4}}, "trials are compared at evaluations, every 8 steps"),
        ({"asha": {"grace": 4}}, "unknown key 'asha.grace'"),
        ({"metric": "accuracy"}, "metric: must be one of ['val_loss', 'loss']"),
        ({"experiment": "nowhere.yaml"}, "experiment: config not found: nowhere.yaml"),
        ({"overrides": {"train.max_iters": 5}}, "overrides.train.max_iters: not settable"),
        ({"out_dir": "s3://bucket/sweep"}, "out_dir: a sweep needs a folder"),
    ],
)
def test_a_bad_sweep_config_is_one_clear_error(tmp_path, changes, message):
    path = write_sweep(tmp_path, **changes)
    with pytest.raises(ConfigError) as error:
        load_sweep(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_the_job_rejects_a_bad_space_before_starting_ray(tmp_path):
    path = write_sweep(tmp_path, space={"model.n_embd": {"choice": []}})
    result = run_job("tune.py", "--config", str(path), timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}: space.model.n_embd: choice needs a non-empty list of values, got []"
    )
    assert "Traceback" not in result.stderr and "Ray" not in result.stdout
    assert not (tmp_path / "sweep").exists()


def test_checking_a_sweep_needs_no_ray():
    modules = ["search_space", "sweep_config", "results", "sweep"]
    code = "import sys\n" + "".join(f"import raygpt.tune.{m}\n" for m in modules)
    code += "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_different_sweep_in_the_same_folder_is_refused(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path))
    assert not check_resume(sweep)  # a new folder: a fresh sweep
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps(sweep.to_dict()))
    assert check_resume(sweep)  # the same sweep: resumed
    changed = load_sweep(write_sweep(tmp_path, num_samples=2))
    with pytest.raises(ConfigError, match=r"holds a different sweep \(changed: num_samples\)"):
        check_resume(changed)


def test_a_swept_learning_rate_carries_min_lr(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path))
    trial = sweep.experiment_dict({"train.learning_rate": 1e-3})
    assert trial["train"]["min_lr"] == pytest.approx(1e-4)  # the base's ratio, 1/10
    assert trial["train"]["max_iters"] == STEPS


# --- one real sweep: interrupted, resumed, finished ------------------------------------------


def results(sweep_dir: Path) -> list[dict]:
    path = sweep_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else []


def ended(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["status"] in ("done", "stopped")]


@pytest.fixture(scope="module")
def sweep_run(ray_session, byte_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    path = write_sweep(root, byte_shards)
    sweep_dir = root / "sweep"
    address = ray_session.get_runtime_context().gcs_address
    command = [sys.executable, str(REPO / "jobs" / "tune.py"), "--config", str(path)]
    command += ["--address", address]

    log = root / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, text=True)
        deadline = time.monotonic() + 400
        while not ended(results(sweep_dir)):  # the table is rewritten as each trial ends
            assert first.poll() is None, f"the sweep exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no trial ended:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        before = results(sweep_dir)
        first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
        first.wait(timeout=120)
    second = run_job("tune.py", "--config", str(path), "--address", address, timeout=400)
    return SimpleNamespace(
        path=path,
        sweep_dir=sweep_dir,
        address=address,
        before=before,
        first_code=first.returncode,
        first_output=log.read_text(),
        second=second,
        rows={row["trial"]: row for row in results(sweep_dir)},
    )


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep_run):
    assert sweep_run.first_code == 130, sweep_run.first_output[-3000:]
    assert "run the same command again to resume" in sweep_run.first_output
    second = sweep_run.second
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the sweep" in second.stdout
    rows = sweep_run.rows
    assert len(rows) == 4 and all(row["status"] in ("done", "stopped") for row in rows.values())
    for row in ended(sweep_run.before):
        assert rows[row["trial"]]["status"] == row["status"]
        started = [r for r in read_metrics(row["run_dir"]) if r.get("event") == "started"]
        assert len(started) == 1, f"{row['trial']} ran again after the resume"


def test_asha_stops_the_weak_trials_early(sweep_run):
    rows = list(sweep_run.rows.values())
    tiny = [row for row in rows if row["params"]["train.learning_rate"] in TINY]
    assert len(tiny) == 2
    for row in tiny:
        assert row["status"] == "stopped" and row["steps"] < STEPS
        # Tune heard fewer evaluations from it than the budget holds
        reports = (Path(row["run_dir"]).parent / "result.json").read_text().splitlines()
        assert len(reports) < STEPS // EXPERIMENT["train"]["eval_interval"]
    assert any(row["status"] == "done" and row["steps"] == STEPS for row in rows)


def test_the_sweep_writes_a_ranked_table_the_best_config_and_a_plot(sweep_run):
    table = (sweep_run.sweep_dir / "results.md").read_text()
    assert table.strip() in sweep_run.second.stdout  # the table it printed
    ranked = results(sweep_run.sweep_dir)
    assert [row["best"] for row in ranked] == sorted(row["best"] for row in ranked)
    best = ranked[0]
    assert best["status"] == "done" and best["params"]["train.learning_rate"] in GOOD
    config = load_experiment(sweep_run.sweep_dir / "best.yaml")
    assert config.train.learning_rate == best["params"]["train.learning_rate"]
    assert config.train.max_iters == STEPS
    assert Path(config.train.out_dir) == sweep_run.sweep_dir / "best"
    assert (sweep_run.sweep_dir / "sweep.png").stat().st_size > 10_000


def test_the_best_config_trains_with_jobs_train(sweep_run):
    best = sweep_run.sweep_dir / "best.yaml"
    result = run_job(
        "train.py", "--config", str(best), "train.max_iters=4", "--address", sweep_run.address
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "trained 4 steps" in result.stdout
    assert (sweep_run.sweep_dir / "best" / "final").is_dir()
    # The console is the job's own story: progress lines (the driver follows metrics.jsonl),
    # none of Ray's internal logging (workers' prefixed output, raylet, C++, INFO lines).
    assert "step      4/4 | loss" in result.stdout
    console = result.stdout + result.stderr
    noise = ["(RayTrainWorker", "(TrainController", "(raylet)", "core_worker", " INFO "]
    assert [n for n in noise if n in console] == [], console[-3000:]
