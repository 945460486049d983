"""Scaling studies: the fits recover a known law, configs fail clearly, and a real study on a
local Ray is interrupted (SIGINT) and finished by running it again.

The fits are tested without Ray, on losses drawn from Chinchilla's own L(N, D) with noise. The
study is the smallest that fits at all (two budgets, three depths, models of 8 to 24 channels),
run the way a user runs it: jobs/scaling.py, interrupted once all runs but the long one have
ended, then started again. Its processes join the session's Ray (--address).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from raygpt.config import ModelConfig
from raygpt.errors import ConfigError
from raygpt.model import GPT
from raygpt.train.run_log import read_metrics
from raygpt.tune.scaling_config import load_scaling
from raygpt.tune.scaling_fit import Run, fit_scaling
from raygpt.tune.scaling_sizes import SizeRule, measure
from raygpt.tune.scaling_study import analyse

from .conftest import REPO, run_job

# --- the fits recover a known law ---------------------------------------------------------

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Chinchilla's


def synthetic_runs(noise: float, seed: int) -> list[Run]:
    """An IsoFLOP study of Chinchilla's law: five budgets, seven sizes each, C = 6ND, the
    loss off by a lognormal factor (noise = its sigma)."""
    rng = np.random.default_rng(seed)
    runs = []
    for flops in np.geomspace(1e18, 1e20, 5):
        for params in np.geomspace(3e7, 3e9, 7):
            tokens = flops / (6 * params)
            loss = (
                TRUE["E"] + TRUE["A"] / params ** TRUE["alpha"] + TRUE["B"] / tokens ** TRUE["beta"]
            )
            runs.append(Run(flops, params, tokens, loss * np.exp(rng.normal(0, noise))))
    return runs


def test_the_fits_recover_a_known_law_from_noisy_runs():
    fit = fit_scaling(synthetic_runs(noise=0.005, seed=0), bootstrap=12, seed=0)
    true_a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])  # 0.452: N_opt ∝ C^a under C = 6ND

    # Approach 3 finds the law itself.
    p = fit.approach3
    assert p.alpha == pytest.approx(TRUE["alpha"], abs=0.02)
    assert p.beta == pytest.approx(TRUE["beta"], abs=0.02)
    assert abs(p.E - TRUE["E"]) < 0.05
    assert p.a == pytest.approx(true_a, abs=0.01)
    for name in ("alpha", "beta", "E"):
        low, high = fit.interval(lambda _, q, name=name: getattr(q, name))
        assert low <= TRUE[name] <= high, (name, low, high)

    # Approach 2 finds its frontier: every budget's minimum inside the sampled sizes, and the
    # exponents within the parabola's small bias (the curves are not exact parabolas).
    a2 = fit.approach2
    assert len(a2.vertices) == 5 and all(v.inside for v in a2.vertices)
    assert a2.params.exponent == pytest.approx(true_a, abs=0.03)
    assert a2.tokens.exponent == pytest.approx(1 - true_a, abs=0.03)
    low, high = fit.interval(lambda r, _: r.params.exponent)
    assert low < a2.params.exponent < high and high - low < 0.2
    for v in a2.vertices:  # each minimum where the law puts it, within 25%
        assert v.params == pytest.approx(p.optimal_params(v.budget), rel=0.25)


def test_without_noise_approach_3_is_exact():
    p = fit_scaling(synthetic_runs(noise=0.0, seed=0), bootstrap=0).approach3
    for name, value in TRUE.items():
        assert getattr(p, name) == pytest.approx(value, rel=1e-3), name


# --- sizes, FLOPs and configs --------------------------------------------------------------


def test_the_size_rule_sets_width_and_heads_from_depth_and_counts_n_on_the_model():
    modern = ModelConfig(
        block_size=64, vocab_size=257, position="rope", norm="rmsnorm", mlp="swiglu", bias=False
    )
    rule = SizeRule(aspect_ratio=20, head_dim=16, kv_group=2)
    model = rule.model(modern, 3)
    # 20 x 3 = 60 channels, rounded up to whole KV groups of two 16-wide heads: 64.
    assert (model.n_layer, model.n_embd, model.n_head, model.n_kv_head) == (3, 64, 4, 2)
    size = measure(model)
    assert size.params == GPT(model).num_params()
    assert size.flops_per_token == 6 * size.params + 12 * 3 * 64 * 64
    # A mixture of experts counts the experts a token goes through, as the training loop does.
    sparse = dataclasses.replace(model, n_expert=4, n_expert_per_token=1)
    expert = 3 * 64 * 256  # SwiGLU: gate and up (64 -> 256 each), down (256 -> 64)
    assert measure(sparse).params == GPT(sparse).num_params() - 3 * 3 * expert


EXPERIMENT = {
    "model": {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 32, "bias": False},
    "data": {"dataset": "stdlib", "tokenizer": "byte"},
    "train": {
        "out_dir": "runs/unused",
        "batch_size": 8,  # 256 tokens a step
        "learning_rate": 1e-2,
        "min_lr": 1e-3,
        "eval_iters": 4,
        "shuffle_buffer": 64,
        "dtype": "float32",
    },
    "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
}
# Two budgets, three depths: 6 runs of 20-1,348 steps (F from 2.3e4 to 2.0e5 FLOPs/token). The
# largest budget's smallest model is the one long run: the interruption finds it still going,
# and the re-run resumes it from its halfway checkpoint. (Six Ray Train runs and a resumed one
# are the least a study that fits can take; each run's start-up costs far more than its steps.)
ISOFLOPS = [{"flops": 1.0e9, "depths": [1, 2, 3]}, {"flops": 8.0e9, "depths": [1, 2, 3]}]


def write_study(directory: Path, dataset: str = "stdlib", **changes) -> Path:
    experiment = json.loads(json.dumps(EXPERIMENT))
    experiment["data"]["dataset"] = str(dataset)
    (directory / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    study = {
        "experiment": "experiment.yaml",
        "out_dir": str(directory / "study"),
        "sizes": {"aspect_ratio": 8, "head_dim": 8, "lr_width": 8},
        "isoflops": ISOFLOPS,
        "trials": {"evals": 2, "min_steps": 10},
        "fit": {"bootstrap": 8},
        "resources": {"trial_cpus": 0.25, "max_concurrent_trials": 3},
        **changes,
    }
    path = directory / "scaling.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"isoflop": []}, "unknown key 'isoflop' (did you mean 'isoflops'?)"),
        ({"sizes": {"aspect": 8}}, "unknown key 'sizes.aspect'"),
        ({"sizes": {"head_dim": 0}}, "sizes.head_dim: must be >= 1, got 0"),
        (
            {"isoflops": [ISOFLOPS[0]]},
            "isoflops: expected a list of at least 2",
        ),
        (
            {"isoflops": [{"flops": 1.0e9, "depths": [1, 2]}, ISOFLOPS[1]]},
            "isoflops[0].depths: expected a list of at least 3 different depths",
        ),
        (
            {"isoflops": [{"flops": "lots", "depths": [1, 2, 3]}, ISOFLOPS[1]]},
            "isoflops[0].flops: expected a number of FLOPs > 0, got 'lots'",
        ),
        (
            {"isoflops": [ISOFLOPS[0], {"flops": 8.0e9, "depths": [1, 2, 12]}]},
            "isoflops[1].depths: depth 12",  # ... gets 1 step, fewer than trials.min_steps
        ),
        ({"overrides": {"model.n_layer": 4}}, "overrides.model.n_layer: set by the study"),
        ({"trials": {"evals": 0}}, "trials.evals: must be >= 1, got 0"),
        ({"recommend": {"gpu": "TPU"}}, "recommend.gpu: must be one of ['H200'"),
        ({"fit": {"bootstrap": "many"}}, "fit.bootstrap: expected an integer, got 'many'"),
    ],
)
def test_a_bad_study_config_is_one_clear_error(tmp_path, changes, message):
    path = write_study(tmp_path, **changes)
    with pytest.raises(ConfigError) as error:
        load_scaling(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_each_run_trains_the_tokens_its_budget_buys(tmp_path):
    study = load_scaling(write_study(tmp_path))
    assert len(study.points) == 6
    for point in study.points:
        assert point.flops == pytest.approx(point.budget, rel=0.5 / point.steps)
        trial = study.sweep.experiment_config({"isoflop.point": point.label}, tmp_path / "x")
        assert trial.model.n_layer == point.size.depth
        assert trial.model.n_embd == 8 * point.size.depth
        assert trial.train.max_iters == point.steps
        assert trial.train.lr_decay_iters is None  # the cosine ends with the run
        # The learning rate falls with width (lr_width 8, exponent 1), min_lr with it.
        assert trial.train.learning_rate == pytest.approx(1e-2 / point.size.depth)
        assert trial.train.min_lr == pytest.approx(1e-3 / point.size.depth)


def test_the_gpu_cluster_study_config_loads(tmp_path):
    """configs/scaling_gpt2.yaml, with the stdlib standing in for FineWeb (not here)."""
    text = (REPO / "configs" / "scaling_gpt2.yaml").read_text()
    text = text.replace(
        "experiment: gpt2_124m_8gpu.yaml", f"experiment: {REPO}/configs/gpt2_124m_8gpu.yaml"
    )
    text = text.replace("data.dataset: /mnt/shared/data/fineweb10B", "data.dataset: stdlib")
    (tmp_path / "study.yaml").write_text(text.replace("/mnt/shared/runs", str(tmp_path)))
    study = load_scaling(tmp_path / "study.yaml")
    assert len(study.points) == 15 and study.tokens_per_step == 16 * 1024 * 4 * 4
    gpt2 = next(p for p in study.points if p.size.depth == 12)
    assert (gpt2.size.n_embd, gpt2.size.n_head) == (768, 12)
    assert gpt2.size.params == 123_587_328  # GPT-2 124M, no biases: N counts the tied head
    assert study.recommend_flops == pytest.approx(64 * 3600 * 989e12 * 0.4)


# --- a real study: interrupted, resumed, fitted ------------------------------------------


def results(study_dir: Path) -> list[dict]:
    path = study_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else []


@pytest.fixture(scope="module")
def study_run(ray_session, byte_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    path = write_study(root, byte_shards)
    study_dir = root / "study"
    address = ray_session.get_runtime_context().gcs_address
    command = [sys.executable, str(REPO / "jobs" / "scaling.py"), "--config", str(path)]
    command += ["--address", address]

    log = root / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, text=True)
        deadline = time.monotonic() + 300
        while sum(row["status"] == "done" for row in results(study_dir)) < 5:
            assert first.poll() is None, f"the study exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no run ended:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        before = results(study_dir)
        first.send_signal(signal.SIGINT)  # Ctrl-C, the long run still going: Tune saves, stops
        first.wait(timeout=120)
    second = run_job("scaling.py", "--config", str(path), "--address", address, timeout=300)
    return SimpleNamespace(
        config=path,
        study_dir=study_dir,
        before=before,
        first_code=first.returncode,
        first_output=log.read_text(),
        second=second,
    )


def test_an_interrupted_study_finishes_only_the_remaining_runs(study_run):
    assert study_run.first_code == 130, study_run.first_output[-3000:]
    assert "run the same command again to resume the study" in study_run.first_output
    second = study_run.second
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the sweep" in second.stdout
    rows = {row["trial"]: row for row in results(study_run.study_dir)}
    assert len(rows) == 6 and all(row["status"] == "done" for row in rows.values())
    finished_first = [row for row in study_run.before if row["status"] == "done"]
    assert len(finished_first) == 5
    for row in finished_first:
        started = [r for r in read_metrics(row["run_dir"]) if r.get("event") == "started"]
        assert len(started) == 1, f"{row['trial']} trained again after the resume"


def test_the_study_writes_every_run_the_fits_and_a_recommendation(study_run):
    report = json.loads((study_run.study_dir / "scaling.json").read_text())
    runs = report["runs"]
    assert len(runs) == 6 and all(run["val_loss"] < 5.6 for run in runs)  # ln 257: chance
    for run in runs:  # each trained the steps its budget buys, and no more
        steps = max(r["step"] for r in read_metrics(run["run_dir"]) if "step" in r)
        assert steps == run["steps"]
    names = {c["name"] for c in report["constants"]}
    assert {"alpha", "beta", "E", "A", "B", "a3", "b3"} <= names
    line = report["recommendation"]["line"]
    assert line.startswith("for a budget of 8e+10 FLOPs") and "expected val loss" in line
    assert line in study_run.second.stdout
    assert (
        "6N + 12 x n_layer x n_embd x block_size"
        in (study_run.study_dir / "scaling.md").read_text()
    )
    assert (study_run.study_dir / "scaling.png").stat().st_size > 20_000


def test_the_fits_are_redone_from_the_runs_on_disk(study_run):
    # What jobs/scaling.py --fit-only does: no sweep, the runs' results read back.
    (study_run.study_dir / "scaling.json").unlink()
    outcome = analyse(load_scaling(study_run.config))
    assert outcome.fit is not None and outcome.seconds is None  # no sweep ran
    report = json.loads((study_run.study_dir / "scaling.json").read_text())
    assert report["recommendation"]["line"] == outcome.recommendation.line()
    assert [run["val_loss"] for run in report["runs"]] == [run.val_loss for run in outcome.runs]
