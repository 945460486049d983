"""Launching a training run: every check first, then a Ray Train TorchTrainer.

`plan_training` runs before any worker starts (and mostly before Ray starts): the config,
the dataset, the starting weights and the run folder are checked so that a bad run ends in
one clear error instead of a worker traceback. `run_training` then builds the trainer:
workers from the `scaling` section, the Ray Data window streams as its datasets, and
checkpoints in the run folder (`train.out_dir`: a path, or a URI such as s3://bucket/runs/x
that every node can reach; Ray Train writes checkpoints there itself), where a re-run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raygpt import storage
from raygpt.checkpoint import checkpoint_format, read_meta, read_model_config
from raygpt.config import ExperimentConfig
from raygpt.data.corpus import STDLIB
from raygpt.data.shards import (
    MANIFEST,
    Manifest,
    dataset_dir,
    read_manifest,
    read_tokenizer_json,
    verify_shards,
)
from raygpt.data.stream import window_dataset
from raygpt.errors import CheckpointError, ConfigError, RaygptError, TokenizerError
from raygpt.ray_runtime import worker_logs_shown
from raygpt.tokenizer import is_own_vocabulary, tokenizer_name
from raygpt.train.loop import FAILURE_ENV, train_loop_per_worker
from raygpt.train.progress import FollowProgress
from raygpt.train.run_log import LOSS_PLOT, METRICS_FILE, plot_losses, read_metrics

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints
DATA_ORDER = "data_order.json"  # what decides which windows each step trains on


@dataclass
class TrainingPlan:
    config: ExperimentConfig
    data_dir: str  # a folder or a URI (raygpt.storage)
    run_dir: str  # absolute: a folder or a URI
    init_weights: str | None  # pretrained weights to start from (None: scratch or resume)
    resuming: bool
    manifest: Manifest | None = None  # None until the stdlib dataset is prepared


@dataclass
class TrainingResult:
    run_dir: str
    final_model: str
    steps: int
    best_val_loss: float | None
    seconds: float
    best_checkpoint: str | None


def plan_training(config: ExperimentConfig) -> TrainingPlan:
    """Check everything a run needs, without starting workers. Raises RaygptError."""
    train = config.train
    run_dir = storage.absolute(train.out_dir)
    resuming = storage.is_file(storage.join(run_dir, SNAPSHOT))
    if train.init_from == "resume" and not resuming:
        raise ConfigError(f"train.init_from=resume but {run_dir} has no checkpoints to resume from")
    init_weights = None
    if resuming:
        config = _adopt_run_model(config, run_dir)
    elif train.init_from not in ("scratch", "resume"):
        init_weights = storage.absolute(train.init_from)  # workers run in other directories
        config = _adopt_pretrained_config(config, init_weights)
    data_dir = dataset_dir(config.data.dataset, config.data.tokenizer)
    plan = TrainingPlan(config, data_dir, run_dir, init_weights, resuming)
    if config.data.dataset != STDLIB or storage.is_file(storage.join(data_dir, MANIFEST)):
        check_data(plan)
    return plan


def check_data(plan: TrainingPlan) -> None:
    """The dataset exists, matches the model, and has enough windows for one step and one eval."""
    manifest = read_manifest(plan.data_dir)
    verify_shards(plan.data_dir, manifest)
    if plan.resuming:
        check_same_data_order(plan, manifest)
    config = plan.config
    if manifest.tokenizer != (wanted := _tokenizer_name(config.data.tokenizer)):
        raise ConfigError(
            f"data.tokenizer is '{config.data.tokenizer}' ({wanted}) but {plan.data_dir} was "
            f"tokenized with '{manifest.tokenizer}'"
        )
    if plan.init_weights is None and not plan.resuming:
        # From scratch the data decides the vocabulary (nanoGPT's meta_vocab_size).
        plan.config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, vocab_size=manifest.vocab_size)
        )
    elif manifest.vocab_size > config.model.vocab_size:
        raise ConfigError(
            f"{plan.data_dir} has token ids up to {manifest.vocab_size - 1}, beyond the model's "
            f"vocabulary of {config.model.vocab_size}"
        )
    train, scaling, block = plan.config.train, plan.config.scaling, plan.config.model.block_size
    per_step = scaling.num_workers * train.gradient_accumulation_steps * train.batch_size
    have = manifest.windows("train", block)
    if have < per_step:
        raise ConfigError(
            f"train.batch_size: one step needs {per_step} windows of block_size={block} "
            f"(num_workers x gradient_accumulation_steps x batch_size) but {plan.data_dir} "
            f"has only {have} in its train split; lower the batch or block size"
        )
    val_windows = manifest.windows("val", block)
    if val_windows < train.batch_size:
        raise ConfigError(
            f"train.batch_size={train.batch_size} is more than the {plan.data_dir} val split "
            f"holds ({val_windows} windows of {block})"
        )
    plan.manifest = manifest


def data_order(config: ExperimentConfig, manifest: Manifest) -> dict[str, Any]:
    """Everything that decides which windows a step trains on. A resumed run skips the
    windows already trained on by counting batches, so all of it must be what it was."""
    shards = [s["sha256"] for split in ("train", "val") for s in manifest.splits[split].shards]
    return {
        "data.tokenizer": config.data.tokenizer,
        "dataset content (shard sha256s)": hashlib.sha256("".join(shards).encode()).hexdigest(),
        "train.batch_size": config.train.batch_size,
        "train.seed": config.train.seed,
        "train.shuffle_buffer": config.train.shuffle_buffer,
    }


def check_same_data_order(plan: TrainingPlan, manifest: Manifest) -> None:
    """A resume with another data order fails here, naming what changed."""
    try:
        before = json.loads(storage.read_text(storage.join(plan.run_dir, DATA_ORDER)))
    except FileNotFoundError:
        return  # a run from before raygpt recorded it
    now = data_order(plan.config, manifest)
    for key, value in now.items():
        if key in before and before[key] != value:
            raise ConfigError(
                f"cannot resume {plan.run_dir}: {key} changed from {before[key]!r} to {value!r}, "
                "and the data order depends on it (the resumed run would skip the wrong "
                "windows): restore it, or start over in a new train.out_dir"
            )


def ensure_data(plan: TrainingPlan) -> None:
    """Prepare the stdlib dataset on first use and check it (a sweep does this once for all)."""
    if plan.manifest is None:
        _prepare_stdlib(plan)
        check_data(plan)


def run_training(plan: TrainingPlan, callbacks: Sequence[Any] = ()) -> TrainingResult:
    """Run the plan on the connected Ray cluster (prepares the stdlib dataset if needed).

    `callbacks` join Ray Train's RunConfig: a Tune trial passes the one that reports to Tune.
    """
    import ray.train
    from ray.data import DataContext
    from ray.train.torch import TorchTrainer

    ensure_data(plan)
    config = plan.config
    train, scaling = config.train, config.scaling
    # Where the progress lines come from: this driver following metrics.jsonl, unless the
    # workers' own output reaches a console (--verbose, or a Tune trial's log).
    follow = None
    if not callbacks and not worker_logs_shown():
        follow = FollowProgress(plan.run_dir, train.max_iters)
    storage.write_text(
        storage.join(plan.run_dir, "experiment.json"), json.dumps(config.to_dict(), indent=2) + "\n"
    )
    order = data_order(config, plan.manifest)
    storage.write_text(storage.join(plan.run_dir, DATA_ORDER), json.dumps(order, indent=2) + "\n")

    # Same order on every rank and every run: what resume and the DDP batch split rely on.
    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the training progress line is the one to watch
    block = config.model.block_size
    datasets = {"train": window_dataset(plan.data_dir, "train", block, shuffle_seed=train.seed)}
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    env_vars = {FAILURE_ENV: os.environ[FAILURE_ENV]} if os.environ.get(FAILURE_ENV) else {}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": config.to_dict(),
            "run_dir": plan.run_dir,
            "data_dir": plan.data_dir,  # each worker reads the val windows itself
            "tokenizer": recorded_tokenizer(plan.manifest.tokenizer),
            "tokenizer_json": read_tokenizer_json(plan.data_dir, plan.manifest),
            "init_weights": plan.init_weights,
            "echo_progress": follow is None,  # the driver prints it otherwise
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=storage.name_of(plan.run_dir),
            storage_path=storage.parent_of(plan.run_dir),  # a URI works: Train uses pyarrow.fs
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=train.keep_checkpoints,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            worker_runtime_env={"env_vars": env_vars} if env_vars else None,
            callbacks=list(callbacks) or None,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    start = time.perf_counter()
    try:
        with follow or contextlib.nullcontext():
            result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise RaygptError(f"training failed: {_root_cause(err)}") from None
    seconds = time.perf_counter() - start
    plot_losses(plan.run_dir)
    best = None
    scored = [
        (checkpoint, metrics["val_loss"])
        for checkpoint, metrics in result.best_checkpoints or []
        if math.isfinite(metrics.get("val_loss", math.nan))
    ]
    if scored:
        checkpoint, _ = min(scored, key=lambda item: item[1])
        # Ray's Checkpoint.path drops a URI's scheme: name it from the run folder instead.
        best = storage.join(plan.run_dir, storage.name_of(checkpoint.path))
    returned = result.return_value or {}
    return TrainingResult(
        run_dir=plan.run_dir,
        final_model=storage.join(plan.run_dir, "final"),
        steps=returned.get("step", train.max_iters),
        best_val_loss=returned.get("best_val_loss"),
        seconds=seconds,
        best_checkpoint=best,
    )


def summary(result: TrainingResult) -> str:
    records = [r for r in read_metrics(result.run_dir) if "tokens_per_s" in r]
    rate = records[-1]["tokens_per_s"] if records else float("nan")
    best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
    return "\n".join(
        [
            f"trained {result.steps} steps in {result.seconds:.0f} s ({rate:,.0f} tokens/s at the end)",
            f"  best val loss: {best}",
            f"  final model:   {result.final_model}",
            f"  best checkpoint: {result.best_checkpoint}",
            f"  metrics:       {storage.join(result.run_dir, METRICS_FILE)}, "
            f"{storage.join(result.run_dir, LOSS_PLOT)}",
            "next: python jobs/sample.py --checkpoint "
            f"{result.final_model} --prompt 'def fibonacci(n):'",
        ]
    )


def recorded_tokenizer(name: str) -> str:
    """What a run's checkpoints record: the built-in name, or 'bpe' with tokenizer.json."""
    return "bpe" if is_own_vocabulary(name) else name


def _tokenizer_name(spec: str) -> str:
    try:
        return tokenizer_name(spec)
    except TokenizerError as err:
        raise ConfigError(f"data.tokenizer: {err}") from None


def _adopt_pretrained_config(config: ExperimentConfig, path: str) -> ExperimentConfig:
    """Fine-tuning keeps the pretrained architecture; the run sets block size (≤) and dropout."""
    try:
        pretrained = read_model_config(path)
        if checkpoint_format(path) == "raygpt" and read_meta(path).extra.get("quantization"):
            raise CheckpointError(f"{path} is INT8 (for serving): train from the original weights")
    except CheckpointError as err:
        raise ConfigError(f"train.init_from: {err}") from None
    block = min(config.model.block_size, pretrained.block_size)
    adopted = dataclasses.replace(pretrained, block_size=block, dropout=config.model.dropout)
    return dataclasses.replace(config, model=adopted)


def _adopt_run_model(config: ExperimentConfig, run_dir: str) -> ExperimentConfig:
    """A resumed run keeps the architecture it was started with."""
    from raygpt.config import ModelConfig, section_from_dict

    path = storage.join(run_dir, "experiment.json")
    try:
        model = json.loads(storage.read_text(path))["model"]
    except (OSError, KeyError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"cannot resume {run_dir}: {path} is missing or corrupt ({err})"
        ) from None
    return dataclasses.replace(
        config, model=section_from_dict(ModelConfig, model, "model", str(path))
    )


def _prepare_stdlib(plan: TrainingPlan) -> None:
    from raygpt.data.prepare import PrepareOptions, prepare_dataset

    print(f"preparing the stdlib corpus into {plan.data_dir} (once) ...", flush=True)
    prepare_dataset(
        PrepareOptions(out_dir=plan.data_dir, tokenizer=plan.config.data.tokenizer, overwrite=True)
    )


def _root_cause(err: Exception) -> str:
    """The innermost worker error, as one line."""
    failures = getattr(err, "worker_failures", None) or {}
    for failure in failures.values():
        cause = failure
        while getattr(cause, "__cause__", None) is not None:
            cause = cause.__cause__
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
