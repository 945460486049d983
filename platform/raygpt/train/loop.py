"""The loop every Ray Train worker runs: data from Ray Data, steps from raygpt.training."""

from __future__ import annotations

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
from raygpt.checkpoint import load_model
from raygpt.config import ExperimentConfig, experiment_from_dict
from raygpt.model import GPT
from raygpt.run_log import append_metrics
from raygpt.train.batches import epoch_windows, fixed_batches, rank_steps, to_xy
from raygpt.train.metrics import TrainMetrics
from raygpt.train.state import (
    TrainState,
    gather_full_state,
    restore_training_checkpoint,
    write_training_checkpoint,
)
from raygpt.training import (
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
    import ray
    import ray.train

    _quiet_train_logs()
    config = experiment_from_dict(loop_config["experiment"], source="<train loop>")
    train, scaling = config.train, config.scaling
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(scaling.torch_threads or max(1, math.ceil(scaling.cpus_per_worker)))
    run_dir = loop_config["run_dir"]  # a folder or a URI (raygpt.storage)

    model = build_model(config, loop_config.get("init_weights"), device)
    set_activation_checkpointing(model, train.activation_checkpointing)
    precision = choose_precision(train.dtype, device)
    wrapped, no_sync = wrap_model(model, scaling.strategy, device, world)
    optimizer = configure_optimizer(wrapped, train, device.type)

    nodes = [ray.get_runtime_context().get_node_id()] * world
    if world > 1:
        dist.all_gather_object(nodes, nodes[0])
    state = TrainState()
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as directory:
            state = restore_training_checkpoint(Path(directory), wrapped, optimizer)
        state.history.append({"resumed_at": state.step, "world_size": world})
        if rank == 0:
            say(f"resumed from step {state.step} (epoch {state.epoch})")
            append_metrics(run_dir, {"event": "resumed", "step": state.step})
    if rank == 0:
        append_metrics(
            run_dir, {"event": "started", "step": state.step, "world_size": world, "nodes": nodes}
        )
    if train.compile:
        wrapped = torch.compile(wrapped)

    train_data = ray.train.get_dataset_shard("train")
    val_windows = fixed_batches(
        ray.train.get_dataset_shard("val"), train.batch_size, train.eval_iters, rank, world
    )
    val_batches = [to_xy(w, device) for w in val_windows]
    metrics = TrainMetrics(storage.name_of(run_dir), state.tokens_seen) if rank == 0 else None
    flops_token = flops_per_token(config.model, model.num_params())
    peak = peak_flops(device, precision.name)
    tokens_per_step = (
        world * train.gradient_accumulation_steps * train.batch_size * config.model.block_size
    )
    checkpoint_every = train.checkpoint_interval or train.eval_interval
    failure = _failure_plan(rank)

    def evaluate() -> float:
        total, count = evaluate_loss(wrapped, val_batches, precision)
        summed = torch.tensor([total, count], dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(summed)
        return float(summed[0] / summed[1])

    def report(record: dict[str, Any], save: bool) -> None:
        checkpoint = None
        if save and (rank == 0 or scaling.strategy == "fsdp"):  # FSDP: a collective gather
            model_state, optimizer_state = gather_full_state(wrapped, optimizer)
        with tempfile.TemporaryDirectory() as tmp:
            if save and rank == 0:
                write_training_checkpoint(
                    Path(tmp),
                    model_state,
                    optimizer_state,
                    config.model,
                    loop_config["tokenizer"],
                    loop_config["experiment"],
                    state,
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(
                record,
                checkpoint=checkpoint,
                checkpoint_dir_name=f"step_{state.step:06d}" if save else None,
            )

    if state.step == 0:  # where the loss curve starts
        start_val = evaluate()
        if rank == 0:
            say(f"step      0/{train.max_iters} | val {start_val:.4f}")
            append_metrics(run_dir, {"step": 0, "val_loss": start_val})
    wrapped.train()
    last_time, last_logged = 0.0, state.step
    start_of_data = time.perf_counter()
    while state.step < train.max_iters:
        epoch_start, fresh_epoch = state.step, state.batches_into_epoch == 0
        windows = epoch_windows(
            train_data, train.batch_size, train.seed + state.epoch, train.shuffle_buffer
        )
        steps = rank_steps(
            windows, rank, world, train.gradient_accumulation_steps, state.batches_into_epoch
        )
        for group in steps:
            if state.step == last_logged and last_time < start_of_data:
                last_time = time.perf_counter()  # the stream's start-up is not step time
            torch.manual_seed(train.seed + 1_000_003 * rank + state.step)  # dropout, resumable
            lr = learning_rate(state.step, train)
            micro_batches = [to_xy(w, device) for w in group]
            loss = train_step(
                wrapped, optimizer, micro_batches, lr, train.grad_clip, precision, no_sync
            )
            state.step += 1
            state.batches_into_epoch += world * train.gradient_accumulation_steps
            state.tokens_seen += tokens_per_step
            if failure is not None and state.step == failure[0]:
                _die_once(failure[1])

            final = state.step >= train.max_iters
            save = final or state.step % checkpoint_every == 0
            evaluating = save or state.step % train.eval_interval == 0
            logging = evaluating or state.step % train.log_interval == 0
            if not logging:
                continue
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - last_time) / (state.step - last_logged)
            if world > 1:  # the step's loss over every rank's micro-batches, not rank 0's alone
                summed = torch.tensor(loss, dtype=torch.float64, device=device)
                dist.all_reduce(summed)
                loss = float(summed) / world
            record = {
                "step": state.step,
                "loss": loss,
                "lr": lr,
                "ms_per_step": seconds * 1000,
                "tokens_per_s": tokens_per_step / seconds,
                "tokens_seen": state.tokens_seen,
                "epoch": state.epoch,
            }
            mfu = model_flops_utilization(record["tokens_per_s"], flops_token, peak)
            record["mfu"] = mfu
            if evaluating:
                record["val_loss"] = evaluate()
                if state.best_val_loss is None or record["val_loss"] < state.best_val_loss:
                    state.best_val_loss = record["val_loss"]
            if rank == 0:
                say(progress_line(record, train.max_iters))
                append_metrics(run_dir, record)
                metrics.publish(record)
            report(record, save)
            last_time, last_logged = time.perf_counter(), state.step  # eval and saving excluded
            if final:
                break
        else:  # the epoch's stream ran out: next epoch, new shuffle
            if state.step == epoch_start and fresh_epoch:  # (a resume at an epoch's end rolls over)
                raise RuntimeError(
                    "the train split has fewer windows than one optimizer step needs"
                )
            state.epoch += 1
            state.batches_into_epoch = 0
            continue
        break

    _export_final(run_dir, wrapped, config, loop_config, state, rank, scaling.strategy)
    return {"step": state.step, "best_val_loss": state.best_val_loss, "epochs": state.epoch}


def build_model(config: ExperimentConfig, init_weights: str | None, device: torch.device) -> GPT:
    """A fresh GPT, or pretrained weights (HF GPT-2, nanoGPT, raygpt) with this run's dropout
    and block size."""
    if init_weights is None:
        torch.manual_seed(config.train.seed)  # identical initial weights on every rank
        return GPT(config.model).to(device)
    model, _ = load_model(init_weights, device)
    if config.model.block_size < model.config.block_size:
        model.crop_block_size(config.model.block_size)
    model.config.dropout = config.model.dropout
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = config.model.dropout
    for block in model.transformer.h:
        block.attn.dropout = config.model.dropout
    return model


def wrap_model(model: GPT, strategy: str, device: torch.device, world: int):
    """DDP (replicated) or FSDP (sharded); returns the model and its `no_sync` for accumulation."""
    if world == 1:
        return model, None
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)

        def no_sync():
            import contextlib

            @contextlib.contextmanager
            def hold():
                model.set_requires_gradient_sync(False)
                try:
                    yield
                finally:
                    model.set_requires_gradient_sync(True)

            return hold()

        return model, no_sync
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    return ddp, ddp.no_sync


def progress_line(record: dict[str, Any], max_iters: int) -> str:
    parts = [f"step {record['step']:>6}/{max_iters}", f"loss {record['loss']:.4f}"]
    if "val_loss" in record:
        parts.append(f"val {record['val_loss']:.4f}")
    parts += [
        f"lr {record['lr']:.2e}",
        f"{record['tokens_per_s']:,.0f} tok/s",
        "mfu n/a" if record["mfu"] is None else f"mfu {record['mfu'] * 100:.1f}%",
        f"{record['ms_per_step']:.0f} ms/step",
    ]
    return " | ".join(parts)


def _export_final(
    run_dir: str, model, config, loop_config, state: TrainState, rank, strategy
) -> None:
    """The trained model as a plain raygpt checkpoint in run_dir/final, for quantize and serve."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from raygpt.checkpoint import META_FILE, CheckpointMeta, save_checkpoint
    from raygpt.train.state import FULL

    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if strategy == "fsdp":
        weights = get_model_state_dict(model, options=FULL)  # a collective: every rank gathers
    elif rank == 0:
        weights = get_model_state_dict(getattr(model, "module", model), options=FULL)
    if rank != 0:
        return
    meta = CheckpointMeta(
        model=config.model,
        tokenizer=loop_config["tokenizer"],
        step=state.step,
        train=loop_config["experiment"],
        extra={"best_val_loss": state.best_val_loss},
    )
    with storage.writing_dir(storage.join(run_dir, "final"), last=META_FILE) as final:
        save_checkpoint(final, weights, meta)


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
