"""The loop every Ray Train worker runs: data from Ray Data, steps from raygpt.train.step.

One run on one worker goes through named phases, in order:

    set-up      the model (fresh or pretrained), DDP/FSDP, optimizer, this rank's data
    resume      weights, optimizer and data position from Ray Train's latest checkpoint
    train       optimizer steps, epoch after epoch; every so often log, evaluate, checkpoint
    export      the trained model as a plain raygpt checkpoint in run_dir/final
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from raygpt import storage
from raygpt.checkpoint import META_FILE, CheckpointMeta, load_model, read_meta, save_checkpoint
from raygpt.config import ExperimentConfig, experiment_from_dict
from raygpt.data.shards import val_windows
from raygpt.device import cpu_threads
from raygpt.errors import CheckpointError
from raygpt.model import GPT
from raygpt.model.moe import active_params
from raygpt.train.batches import epoch_windows, eval_batches, rank_steps, to_xy
from raygpt.train.expert_load import ExpertLoad
from raygpt.train.metrics import TrainMetrics
from raygpt.train.progress import progress_line, start_line
from raygpt.train.run_log import append_metrics
from raygpt.train.state import (
    FULL,
    STATE_FILE,
    TrainState,
    checkpoint_meta,
    gather_full_state,
    restore_training_checkpoint,
    write_training_checkpoint,
)
from raygpt.train.step import (
    choose_precision,
    configure_optimizer,
    evaluate_loss,
    flops_per_token,
    learning_rate,
    model_flops_utilization,
    peak_flops,
    set_activation_checkpointing,
    train_step,
)

# Chaos testing: "STEP:RANK:MARKER" makes RANK exit hard at STEP once (MARKER records it).
FAILURE_ENV = "RAYGPT_INJECT_FAILURE"


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    _quiet_train_logs()
    run = WorkerRun(loop_config)
    run.resume()
    run.train()
    run.export_final()
    return {
        "step": run.state.step,
        "best_val_loss": run.state.best_val_loss,
        "epochs": run.state.epoch,
    }


class WorkerRun:
    """One worker's share of a training run; rank 0 also logs, reports metrics and writes."""

    # -- set-up ----------------------------------------------------------------------------

    def __init__(self, loop_config: dict[str, Any]) -> None:
        import ray.train

        self.loop_config = loop_config
        self.config = experiment_from_dict(loop_config["experiment"], source="<train loop>")
        self.train_config, scaling = self.config.train, self.config.scaling
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.set_num_threads(cpu_threads(scaling.cpus_per_worker, scaling.torch_threads))
        self.run_dir = loop_config["run_dir"]  # a folder or a URI (raygpt.storage)
        self.strategy = scaling.strategy

        self.model, pretrained = build_model(
            self.config, loop_config.get("init_weights"), self.device
        )
        self.vocabulary = {
            "tokenizer": loop_config["tokenizer"],
            "tokenizer_json": loop_config.get("tokenizer_json"),
            **_inherited(pretrained),
        }
        set_activation_checkpointing(self.model, self.train_config.activation_checkpointing)
        self.precision = choose_precision(self.train_config.dtype, self.device)
        self.wrapped, self.no_sync = wrap_model(self.model, self.strategy, self.device, self.world)
        self.optimizer = configure_optimizer(self.wrapped, self.train_config, self.device.type)
        self.experts = ExpertLoad.of(self.model, self.train_config)  # None: a dense model
        self.state = TrainState()
        self.last_saved: str | None = None  # the newest checkpoint's folder name

        train = self.train_config
        self.tokens_per_step = (
            self.world
            * train.gradient_accumulation_steps
            * train.batch_size
            * self.config.model.block_size
        )
        self.flops_per_token = flops_per_token(
            self.config.model, active_params(self.model, self.model.num_params())
        )
        self.peak_flops = peak_flops(self.device, self.precision.name)
        self.checkpoint_every = train.checkpoint_interval or train.eval_interval
        self.failure = _failure_plan(self.rank)

    @property
    def lead(self) -> bool:
        """Rank 0 speaks for the run: the console, metrics.jsonl, Prometheus, checkpoints."""
        return self.rank == 0

    def say(self, line: str) -> None:
        """A console line, when this worker's output reaches a console (Ray's worker logs
        shown on the driver); otherwise the driver prints it from metrics.jsonl."""
        if self.loop_config.get("echo_progress", True):
            say(line)

    # -- resume ----------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from Ray Train's latest checkpoint if there is one, then open the data."""
        import ray
        import ray.train

        nodes = [ray.get_runtime_context().get_node_id()] * self.world
        if self.world > 1:
            dist.all_gather_object(nodes, nodes[0])
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            self.state = self._restore_newest_readable(checkpoint)
            resumed = self.state.history[-1]
            self.last_saved = resumed["from"]
            if self.lead:
                self.say(f"resumed from step {self.state.step} (epoch {self.state.epoch})")
                event = {"event": "resumed", "step": self.state.step}
                if "unreadable" in resumed:
                    event["unreadable"] = resumed["unreadable"]
                append_metrics(self.run_dir, event)
        if self.lead:
            append_metrics(
                self.run_dir,
                {
                    "event": "started",
                    "step": self.state.step,
                    "world_size": self.world,
                    "nodes": nodes,
                },
            )
        if self.train_config.compile:  # after the restore: state dicts keep their plain names
            self.wrapped = torch.compile(self.wrapped)

        train = self.train_config
        self.train_data = ray.train.get_dataset_shard("train")
        # The val split's first windows, read from the shards: a few MB, the same windows the
        # evaluate job and the INT8 gate score, and no second Ray Data pipeline to start.
        windows = val_windows(
            self.loop_config["data_dir"],
            self.config.model.block_size,
            train.eval_iters * train.batch_size,
        )
        self.val_batches = [
            to_xy(b, self.device)
            for b in eval_batches(windows, train.batch_size, self.rank, self.world)
        ]
        self.metrics = (
            TrainMetrics(storage.name_of(self.run_dir), self.state.tokens_seen)
            if self.lead
            else None
        )

    def _restore_newest_readable(self, latest) -> TrainState:
        """Ray Train's latest checkpoint; if it is corrupt (a truncated file from a crash
        mid-write), the newest older one in the run folder that reads, with a warning."""
        latest_name = storage.name_of(latest.path)
        with latest.as_directory() as directory:
            try:
                self.vocabulary.update(_inherited(read_meta(directory)))
                state = restore_training_checkpoint(Path(directory), self.wrapped, self.optimizer)
                state.history.append(
                    {"resumed_at": state.step, "world_size": self.world, "from": latest_name}
                )
                return state
            except CheckpointError as err:
                problem = err
        for older in older_checkpoints(self.run_dir, latest_name):
            try:
                state = restore_training_checkpoint(
                    storage.local_copy(older), self.wrapped, self.optimizer
                )
            except (CheckpointError, storage.StorageError):
                continue
            if self.lead:
                self.say(
                    f"warning: the latest checkpoint {latest_name} is unreadable ({problem}); "
                    f"resuming from {storage.name_of(older)} instead"
                )
            state.history.append(
                {
                    "resumed_at": state.step,
                    "world_size": self.world,
                    "from": storage.name_of(older),
                    "unreadable": latest_name,
                }
            )
            return state
        raise CheckpointError(f"cannot resume {self.run_dir}: no checkpoint reads ({problem})")

    # -- train -----------------------------------------------------------------------------

    def train(self) -> None:
        """Epochs of optimizer steps until max_iters. Every log_interval a progress line;
        every eval_interval the val loss; every checkpoint_interval (and at the end) a checkpoint."""
        train = self.train_config
        if self.state.step == 0:  # where the loss curve starts
            start = self.evaluate()
            if self.lead:
                self.say(start_line(start, train.max_iters))
                append_metrics(self.run_dir, {"step": 0, "val_loss": start})
        self.wrapped.train()
        self._timer = StepTimer(self.state.step)
        while self.state.step < train.max_iters:
            self._train_epoch()

    def _train_epoch(self) -> None:
        train, state = self.train_config, self.state
        epoch_start, fresh_epoch = state.step, state.batches_into_epoch == 0
        windows = epoch_windows(
            self.train_data, train.batch_size, train.seed + state.epoch, train.shuffle_buffer
        )
        steps = rank_steps(
            windows,
            self.rank,
            self.world,
            train.gradient_accumulation_steps,
            state.batches_into_epoch,
        )
        for group in steps:
            loss, lr = self.step(group)
            if self._after_step(loss, lr):
                return
        # The epoch's stream ran out: next epoch, new shuffle (a resume at an epoch's end rolls over).
        if state.step == epoch_start and fresh_epoch:
            raise RuntimeError("the train split has fewer windows than one optimizer step needs")
        state.epoch += 1
        state.batches_into_epoch = 0

    def step(self, group) -> tuple[float, float]:
        """One optimizer step on this rank's micro-batches; (its mean loss, the lr used)."""
        train, state = self.train_config, self.state
        self._timer.start_if_first(state.step)
        torch.manual_seed(train.seed + 1_000_003 * self.rank + state.step)  # dropout, resumable
        lr = learning_rate(state.step, train)
        micro_batches = [to_xy(w, self.device) for w in group]
        loss = train_step(
            self.wrapped,
            self.optimizer,
            micro_batches,
            lr,
            train.grad_clip,
            self.precision,
            self.no_sync,
            self.experts,
        )
        if not math.isfinite(loss):
            raise self.diverged("loss", loss, state.step + 1)
        state.step += 1
        state.batches_into_epoch += self.world * train.gradient_accumulation_steps
        state.tokens_seen += self.tokens_per_step
        if self.failure is not None and state.step == self.failure[0]:
            _die_once(self.failure[1])
        return loss, lr

    def _after_step(self, loss: float, lr: float) -> bool:
        """Log, evaluate and checkpoint when due; True once max_iters is reached."""
        train, step = self.train_config, self.state.step
        final = step >= train.max_iters
        checkpoint_due = final or step % self.checkpoint_every == 0
        evaluating = checkpoint_due or step % train.eval_interval == 0
        if not (evaluating or step % train.log_interval == 0):
            return False
        record = self.progress_record(loss, lr)
        save = checkpoint_due
        if evaluating:
            record["val_loss"] = self.evaluate()
            if not math.isfinite(record["val_loss"]):
                raise self.diverged("val loss", record["val_loss"], step)
            improved = (
                self.state.best_val_loss is None or record["val_loss"] < self.state.best_val_loss
            )
            if improved:
                self.state.best_val_loss = record["val_loss"]
            # nanoGPT's always_save_checkpoint=False: only a better model (or the last) is saved.
            save = checkpoint_due and (final or improved or train.always_save_checkpoint)
        if self.lead:
            self.say(progress_line(record, train.max_iters))
            append_metrics(self.run_dir, record)
            self.metrics.publish(record)
        self.report(record, save)
        self._timer.restart(step)  # evaluation and saving are not step time
        return final

    def progress_record(self, loss: float, lr: float) -> dict[str, Any]:
        """The step's numbers: loss over every rank's micro-batches, throughput, MFU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = self._timer.seconds_per_step(self.state.step)
        if self.world > 1:  # the step's loss over every rank, not rank 0's alone
            summed = torch.tensor(loss, dtype=torch.float64, device=self.device)
            dist.all_reduce(summed)
            loss = float(summed) / self.world
        tokens_per_s = self.tokens_per_step / seconds
        record = {
            "step": self.state.step,
            "loss": loss,
            "lr": lr,
            "ms_per_step": seconds * 1000,
            "tokens_per_s": tokens_per_s,
            "tokens_seen": self.state.tokens_seen,
            "epoch": self.state.epoch,
            "mfu": model_flops_utilization(tokens_per_s, self.flops_per_token, self.peak_flops),
        }
        if self.experts is not None:  # every rank's load since the last line
            record.update(self.experts.summary(dist.all_reduce if self.world > 1 else None))
        return record

    # -- evaluate and checkpoint -------------------------------------------------------------

    def evaluate(self) -> float:
        """Mean val loss over every rank's fixed val batches."""
        total, count = evaluate_loss(self.wrapped, self.val_batches, self.precision)
        summed = torch.tensor([total, count], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(summed)
        return float(summed[0] / summed[1])

    def diverged(self, what: str, value: float, step: int) -> TrainingDiverged:
        last = (
            f"the last good checkpoint is {storage.join(self.run_dir, self.last_saved)}"
            if self.last_saved
            else "no checkpoint was saved yet"
        )
        return TrainingDiverged(
            f"{what} is {value} at step {step}: training diverged; {last}. Lower "
            "train.learning_rate (or raise warmup_iters, keep grad_clip) and resume, or start over"
        )

    def report(self, record: dict[str, Any], save: bool) -> None:
        """Hand the record (and, when saving, a checkpoint from rank 0) to Ray Train."""
        import ray.train

        checkpoint = None
        if save and (self.lead or self.strategy == "fsdp"):  # FSDP: a collective gather
            model_state, optimizer_state = gather_full_state(self.wrapped, self.optimizer)
        with tempfile.TemporaryDirectory() as tmp:
            if save and self.lead:
                write_training_checkpoint(
                    Path(tmp), model_state, optimizer_state, self._meta(), self.state
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            name = self.checkpoint_name() if save else None
            ray.train.report(record, checkpoint=checkpoint, checkpoint_dir_name=name)
        if save:
            self.last_saved = name

    def checkpoint_name(self) -> str:
        """step_000042; after a resume that skipped an unreadable checkpoint, the steps
        trained again are saved under new names, never over the folders Ray still tracks."""
        redone = sum(1 for entry in self.state.history if "unreadable" in entry)
        return f"step_{self.state.step:06d}" + (f".redo{redone}" if redone else "")

    def _meta(self):
        return checkpoint_meta(
            self.config.model, self.vocabulary, self.loop_config["experiment"], self.state
        )

    # -- export ----------------------------------------------------------------------------

    def export_final(self) -> None:
        """The trained model as a plain raygpt checkpoint in run_dir/final (quantize, serve)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        model = getattr(self.wrapped, "_orig_mod", self.wrapped)  # torch.compile's wrapper
        if self.strategy == "fsdp":
            weights = get_model_state_dict(model, options=FULL)  # a collective: every rank gathers
        elif self.lead:
            weights = get_model_state_dict(getattr(model, "module", model), options=FULL)
        if not self.lead:
            return
        with storage.writing_dir(storage.join(self.run_dir, "final"), last=META_FILE) as final:
            save_checkpoint(final, weights, self._meta())


class StepTimer:
    """Wall time per optimizer step since the last log line, counting only steps: the data
    stream's start-up, evaluation and checkpointing are left out."""

    def __init__(self, step: int) -> None:
        self.since, self.from_step = 0.0, step
        self.started = time.perf_counter()

    def start_if_first(self, step: int) -> None:
        if step == self.from_step and self.since < self.started:
            self.since = time.perf_counter()  # the stream's start-up is not step time

    def seconds_per_step(self, step: int) -> float:
        return (time.perf_counter() - self.since) / (step - self.from_step)

    def restart(self, step: int) -> None:
        self.since, self.from_step = time.perf_counter(), step


class TrainingDiverged(RuntimeError):
    """The loss or the val loss stopped being a finite number."""


def older_checkpoints(run_dir: str, newest: str) -> list[str]:
    """The run's checkpoint folders older than `newest`, newest first."""
    names = {
        path.split("/")[0]
        for path in storage.listing(run_dir)
        if path.startswith("step_") and path.endswith("/" + STATE_FILE)
    }
    older = [n for n in names if _step_of(n) < _step_of(newest)]
    return [storage.join(run_dir, n) for n in sorted(older, key=_step_of, reverse=True)]


def _step_of(checkpoint_name: str) -> int:
    return int(checkpoint_name.split("_")[1].split(".")[0])  # step_000042 or step_000042.redo1


def build_model(
    config: ExperimentConfig, init_weights: str | None, device: torch.device
) -> tuple[GPT, CheckpointMeta | None]:
    """A fresh GPT, or pretrained weights (any format load_model reads) with this run's dropout
    and block size, and their metadata."""
    if init_weights is None:
        torch.manual_seed(config.train.seed)  # identical initial weights on every rank
        return GPT(config.model).to(device), None
    model, meta = load_model(init_weights, device)
    if config.model.block_size < model.config.block_size:
        model.crop_block_size(config.model.block_size)
    model.config.dropout = config.model.dropout
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = config.model.dropout
    for block in model.transformer.h:
        block.attn.dropout = config.model.dropout
    return model, meta


def _inherited(meta: CheckpointMeta | None) -> dict[str, Any]:
    """What a run keeps of its pretrained model's (or resumed checkpoint's) metadata."""
    if meta is None:
        return {}
    return {"special_tokens": meta.special_tokens, "chat_template": meta.chat_template}


def wrap_model(model: GPT, strategy: str, device: torch.device, world: int):
    """DDP (replicated) or FSDP (sharded); returns the model and its `no_sync` for accumulation."""
    if world == 1:
        return model, None
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)

        @contextlib.contextmanager
        def no_sync():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return model, no_sync
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    return ddp, ddp.no_sync


def say(line: str) -> None:
    """One line to the driver's console (Train's patched print would log it twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _quiet_train_logs() -> None:
    """Ray Train logs every report and checkpoint at INFO; the progress line says it better."""
    from ray.train.v2._internal.execution import context, storage

    for name in (context.__file__, storage.__name__):  # context.py names its logger by path
        logging.getLogger(name).setLevel(logging.WARNING)


def _failure_plan(rank: int) -> tuple[int, str] | None:
    spec = os.environ.get(FAILURE_ENV)
    if not spec:
        return None
    step, failing_rank, marker = spec.split(":", 2)
    return (int(step), marker) if int(failing_rank) == rank else None


def _die_once(marker: str) -> None:
    if Path(marker).exists():
        return
    Path(marker).write_text("died")
    # Ray Train commits a report once its controller has polled every rank (every 2 s):
    # wait past that, so the failure lands after the last checkpoint, as a crash would.
    time.sleep(3)
    say(f"{FAILURE_ENV}: worker exits now")
    os._exit(1)
