"""The training loop, run by every Ray Train worker, and `fit`, which starts it on a TorchTrainer.

The loop knows nothing about video or points: a task (see `tasks.py`) builds the model and the
datasets, computes the training loss of a batch and evaluates. The loop owns optimisation,
distribution, checkpoints and logs.

Reporting to Ray Train is not free (each `ray.train.report` waits on the controller's health
check, about 2 s with Train V2 defaults), so the loop reports only when it checkpoints: at epoch
ends and every `train.checkpoint_every` steps, never per step.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from spatiotemporal.distributed import collective_device, world_size
from spatiotemporal.layers.sync_batch_norm import synchronize_batch_norms
from spatiotemporal.train import checkpoint as ckpt
from spatiotemporal.train.ema import ModelEma
from spatiotemporal.train.optim import CosineWarmupSchedule, build_optimizer
from spatiotemporal.train.ray_env import DEFAULT_HEALTH_CHECK_INTERVAL_S, HEALTH_CHECK_INTERVAL, train_runtime_env
from spatiotemporal.train.sampler import ResumableDistributedSampler, SeededSamples


class SimulatedCrash(RuntimeError):
    """Raised by `train.crash_at_step` to test that --resume continues a run that died."""


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute each transformer block in backward instead of storing its activations.

    Uses the model's own switch (`grad_checkpointing`) when it has one; otherwise wraps every
    module of each `blocks` ModuleList. Returns how many blocks are affected (0: nothing to do).
    """
    from torch.utils.checkpoint import checkpoint

    if hasattr(model, "grad_checkpointing"):
        model.grad_checkpointing = True
        return -1
    count = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] == "blocks" and isinstance(module, torch.nn.ModuleList):
            for block in module:
                forward = block.forward
                block.forward = lambda *a, _f=forward, **k: checkpoint(_f, *a, use_reentrant=False, **k)
                count += 1
    return count


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _all_reduce_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if world_size() > 1:
        # NCCL (used whenever training runs on GPUs) reduces CUDA tensors only.
        tensor = tensor.to(collective_device())
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def _gather_rng_states(world: int) -> list[dict]:
    state = ckpt.rng_state()
    if world == 1:
        return [state]
    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    from tqdm import tqdm

    from spatiotemporal.train.logs import MetricsLog
    from spatiotemporal.train.tasks import make_task

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = int(config["ray"]["resources_per_worker"].get("CPU", 1))
    torch.set_num_threads(max(1, threads))
    tcfg, ocfg, scfg, dcfg = config["train"], config["optim"], config["schedule"], config["data"]
    run_dir = Path(config["_run_dir"])

    # Same seed on every rank for the weights (DDP also broadcasts them), per-rank seeds after.
    _seed_all(config["seed"])
    task = make_task(config)
    model = task.build_model()
    if tcfg["activation_checkpointing"]:
        enable_activation_checkpointing(model)
    if tcfg["sync_batchnorm"]:
        synchronize_batch_norms(model)
    _seed_all(config["seed"] * 1000 + rank + 1)
    device = ray.train.torch.get_device()
    model.to(device)
    ema = ModelEma(model, tcfg["ema_decay"]) if tcfg["ema_decay"] else None
    optimizer = build_optimizer(model, ocfg)

    train_set = task.train_set()
    batch_size, accum = dcfg["batch_size"], tcfg["accum_steps"]
    sampler = ResumableDistributedSampler(len(train_set), rank, world, batch_size, config["seed"])
    micro_per_epoch = sampler.batches_per_epoch()
    steps_per_epoch = micro_per_epoch // accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_set)} training samples make no full step of {world} workers x batch {batch_size} x "
            f"{accum} accumulation"
        )
    epochs = scfg["epochs"]
    total_steps = steps_per_epoch * epochs
    schedule = CosineWarmupSchedule(
        optimizer, total_steps, int(round(scfg["warmup_epochs"] * steps_per_epoch)), ocfg["lr"], scfg["min_lr"]
    )

    position = ckpt.Position()
    restored = ray.train.get_checkpoint()
    if config["_resume_dir"] is not None:
        newest = Path(config["_resume_dir"])
        if restored is None or ckpt.step_of(newest) > ckpt.step_of(Path(restored.path)):
            restored = ray.train.Checkpoint.from_directory(str(newest))
    if restored is not None:
        with restored.as_directory() as directory:
            position = ckpt.load(Path(directory), rank, model, optimizer, schedule, ema)
    ddp_model = ray.train.torch.prepare_model(model)

    log = MetricsLog(run_dir, resume_step=position.step if restored is not None else None) if rank == 0 else None
    progress = tqdm(
        total=total_steps, initial=position.step, desc=f"train {config['name']}", disable=rank != 0, dynamic_ncols=True
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if tcfg["bf16"] else contextlib.nullcontext()
    )
    window = [0.0, 0.0, 0.0]  # loss sum, correct, count since the last log row
    started = time.perf_counter()

    def report(epoch_metrics: dict | None) -> None:
        rng_states = _gather_rng_states(world)
        metrics = {"step": position.step, "epoch": position.epoch, **(epoch_metrics or {})}
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as directory:
            ckpt.save(
                Path(directory), rng_states, position, model, optimizer, schedule, ema, config,
                class_names=task.class_names,
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    for epoch in range(position.epoch, epochs):
        skip = position.batch_in_epoch if epoch == position.epoch else 0
        sampler.set_position(epoch, skip)
        loader = torch.utils.data.DataLoader(
            SeededSamples(train_set, config["seed"]),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=task.collate,
            num_workers=dcfg["loader_workers"],
        )
        ddp_model.train()
        micro = skip
        for batch in loader:
            if micro >= steps_per_epoch * accum:
                break
            batch = task.to_device(batch, device)
            rng = np.random.default_rng([config["seed"], epoch, micro, rank])
            sync = (micro + 1) % accum == 0
            no_sync = ddp_model.no_sync() if (not sync and hasattr(ddp_model, "no_sync")) else contextlib.nullcontext()
            with no_sync:
                with autocast:
                    loss, correct, count = task.train_loss(ddp_model, batch, rng)
                (loss / accum).backward()
            window[0] += float(loss.detach()) * count
            window[1] += correct
            window[2] += count
            micro += 1
            if not sync:
                continue
            lr = schedule.apply()
            grad_norm = None
            if tcfg["clip_grad"]:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["clip_grad"]))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if ema is not None:
                ema.update(model)
            position.step += 1
            position.epoch, position.batch_in_epoch = epoch, micro
            progress.update(1)
            if position.step % tcfg["log_every"] == 0 or micro == steps_per_epoch * accum:
                loss_sum, n_correct, n = _all_reduce_sum(window)
                window = [0.0, 0.0, 0.0]
                row = {"split": "train", "step": position.step, "epoch": epoch, "lr": lr,
                       "loss": loss_sum / max(n, 1), "accuracy": n_correct / max(n, 1),
                       "elapsed_s": time.perf_counter() - started}  # fmt: skip
                if grad_norm is not None:
                    row["grad_norm"] = grad_norm
                if log is not None:
                    log.write(row)
                    progress.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}")
            at_epoch_end = micro == steps_per_epoch * accum
            if tcfg["checkpoint_every"] and position.step % tcfg["checkpoint_every"] == 0 and not at_epoch_end:
                report(None)
            if tcfg["crash_at_step"] is not None and position.step == tcfg["crash_at_step"]:
                # A testing aid standing in for a machine lost mid-run: the workers fail at once.
                raise SimulatedCrash(f"crash_at_step={position.step} reached")

        position.epoch, position.batch_in_epoch = epoch + 1, 0
        epoch_metrics: dict = {}
        if (epoch + 1) % tcfg["eval_every"] == 0 or epoch + 1 == epochs:
            eval_model = ema.module if ema is not None else model
            epoch_metrics = task.evaluate(eval_model, rank, world, run_dir if epoch + 1 == epochs else None)
            if log is not None:
                log.write({"split": "val", "step": position.step, "epoch": epoch + 1, **epoch_metrics})
        report(epoch_metrics)
    progress.close()
    if log is not None:
        from spatiotemporal.train.logs import plot_curves

        log.close()
        plot_curves(log.path, run_dir / "curves.png")


def fit(config: dict, resume: bool = False, address: str | None = None) -> dict:
    """Train on Ray Train's TorchTrainer; returns the last validation row of metrics.jsonl.

    `address` (or RAY_ADDRESS) joins an existing cluster; otherwise a local one is started and
    shut down afterwards. The run lives in `output_dir/name`: checkpoints, metrics.jsonl,
    tensorboard/, curves.png and the evaluation reports.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from spatiotemporal.train.logs import read_metrics

    os.environ.setdefault(HEALTH_CHECK_INTERVAL, DEFAULT_HEALTH_CHECK_INTERVAL_S)
    storage = Path(config["output_dir"]).resolve()
    run_dir = storage / config["name"]
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another name")
    # Ray Train workers run in their own working directory, so a path relative to the caller's
    # would name nothing there: every path crosses over resolved.
    root = config["data"]["root"]
    data = {**config["data"], "root": None if root is None else str(Path(root).resolve())}
    loop_config = {**config, "data": data, "output_dir": str(storage), "_run_dir": str(run_dir), "_resume_dir": None}
    if resume:
        # Train V2 restores the latest checkpoint it registered for a run of the same name and
        # storage by itself; a checkpoint written just before the crash may not have been
        # registered yet, so the newest one on disk is passed along as well.
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is None:
            raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from")
        loop_config["_resume_dir"] = str(latest)
    run_dir.mkdir(parents=True, exist_ok=True)

    rcfg = config["ray"]
    address = address or rcfg["address"] or os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, runtime_env=train_runtime_env(local_without_dashboard=False))
        else:
            cpus = max(os.cpu_count() or 1, rcfg["num_workers"] * int(rcfg["resources_per_worker"].get("CPU", 1)))
            # "local" starts a new cluster even when another one runs on this machine.
            ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                     runtime_env=train_runtime_env(local_without_dashboard=True))  # fmt: skip
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            torch_config=TorchConfig(backend="nccl" if rcfg["use_gpu"] else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=rcfg["num_workers"],
                use_gpu=rcfg["use_gpu"],
                resources_per_worker=dict(rcfg["resources_per_worker"]),
            ),
            run_config=ray.train.RunConfig(
                name=config["name"],
                storage_path=str(storage),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                failure_config=ray.train.FailureConfig(max_failures=0),
            ),
        )
        trainer.fit()
    finally:
        if started_here:
            ray.shutdown()
    rows = read_metrics(run_dir / "metrics.jsonl")
    val = [r for r in rows if r.get("split") == "val"]
    return val[-1] if val else {}
