"""A whole run on object storage (s3:// on a local S3-compatible server), as on a multi-node
cluster where no node's disk is shared: shards written by Ray Data's pipeline, read by Ray
Train's workers, checkpoints and the run record written there, a resume found there, and the
INT8 release read from and written to it."""

from __future__ import annotations

import json

from raygpt import storage
from raygpt.checkpoint import load_model
from raygpt.config import experiment_from_dict
from raygpt.data.prepare import PrepareOptions, prepare_dataset
from raygpt.data.shards import read_manifest
from raygpt.model.int8 import is_quantized
from raygpt.release.int8 import REPORT, release_int8
from raygpt.train.launch import plan_training, run_training
from raygpt.train.run_log import read_metrics

from .test_train import TINY


def test_shards_runs_checkpoints_and_int8_on_s3(
    ray_session, byte_shards, s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))  # not the user's cache
    data = f"{s3_bucket}/datasets/bytes"
    options = PrepareOptions(
        out_dir=data, tokenizer="byte", include=["*/json/*", "*/email/*"], overwrite=True
    )
    prepare_dataset(options)
    remote, local = read_manifest(data), read_manifest(byte_shards)
    # The same corpus gives byte-identical shards wherever they are written.
    assert [s["sha256"] for s in remote.splits["train"].shards] == [
        s["sha256"] for s in local.splits["train"].shards
    ]

    run = f"{s3_bucket}/runs/tiny"

    def experiment(max_iters: int):
        raw = json.loads(json.dumps(TINY))
        raw["data"]["dataset"] = data
        raw["train"].update(out_dir=run, max_iters=max_iters, lr_decay_iters=8)
        return experiment_from_dict(raw)

    result = run_training(plan_training(experiment(6)))
    assert result.final_model == f"{run}/final"
    assert result.best_checkpoint in (f"{run}/step_000003", f"{run}/step_000006")
    files = storage.listing(run)
    for name in ("experiment.json", "metrics.jsonl", "loss.png", "final/model.safetensors"):
        assert name in files, sorted(files)
    assert "checkpoint_manager_snapshot.json" in files  # Ray Train's own record, on S3 too
    assert {name.split("/")[0] for name in files if name.startswith("step_")} == {
        "step_000003",
        "step_000006",
    }

    plan = plan_training(experiment(8))
    assert plan.resuming  # found on S3, not on this node's disk
    resumed = run_training(plan)
    assert resumed.steps == 8
    assert [r["step"] for r in read_metrics(run) if r.get("event") == "resumed"] == [6]
    assert load_model(resumed.final_model)[1].step == 8

    int8 = f"{run}/int8"
    reports = release_int8(resumed.final_model, int8, windows=8)
    assert [r.checkpoint for r in reports] == [resumed.final_model, int8]
    assert json.loads(storage.read_text(f"{int8}/{REPORT}"))[1]["checkpoint"] == int8
    model, meta = load_model(int8)
    assert is_quantized(model) and meta.step == 8
