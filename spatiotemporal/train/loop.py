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
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from spatiotemporal.distributed import collective_device, world_size
from spatiotemporal.layers.sync_batch_norm import synchronize_batch_norms
from spatiotemporal.train import checkpoint as ckpt
from spatiotemporal.train.ema import ModelEma
from spatiotemporal.train.failures import (
    ATTEMPTS_FILE, FAILURES_FILE, TRACEBACKS_FILE, RecordFailures, max_failures, record_attempt, stopped,
)
from spatiotemporal.train.feed import FEED_FILE, RayFeed, decode_cpus, decode_placement, live_nodes, record_feed
from spatiotemporal.train.optim import CosineWarmupSchedule, build_optimizer
from spatiotemporal.train.ray_env import DEFAULT_HEALTH_CHECK_INTERVAL_S, HEALTH_CHECK_INTERVAL, train_runtime_env
from spatiotemporal.train.sampler import ResumableDistributedSampler, SeededSamples
from spatiotemporal.train.skipped import SKIPPED_FILE, SkippedVideos, record_skipped, warn_skipped


class SimulatedCrash(RuntimeError):
    """Raised by `train.crash_at_step` to test that --resume continues a run that died."""


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute each transformer block in backward instead of storing its activations.

    Uses the model's own switch (`set_grad_checkpointing`, which every registered model has) when
    it has one; otherwise replaces every module of each `blocks` ModuleList by a checkpointing
    wrapper (torch's, as FSDP uses) that runs the block through `run_block`, as the models' own
    switches do. Wrapping modules, rather than patching their `forward` with closures over the
    original block, keeps a deep copy (the EMA model) running its own weights; the wrapper keeps
    state-dict keys unchanged, so checkpoints load into a model without it.
    Returns how many blocks were wrapped (-1: the model's switch was used; 0: nothing to do).
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    from spatiotemporal.layers.checkpointing import run_block

    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
        return -1
    count = 0
    for name, module in list(model.named_modules()):
        if name.split(".")[-1] == "blocks" and isinstance(module, torch.nn.ModuleList):
            for i, block in enumerate(module):
                module[i] = checkpoint_wrapper(block, checkpoint_fn=run_block, checkpointed=True)
                count += 1
    return count


def checkpoint_activations(model: torch.nn.Module, name: str) -> None:
    """`train.activation_checkpointing=true`: switch it on, or refuse a model it would not reach
    rather than train silently without it (and run out of memory at the size it was meant for)."""
    if enable_activation_checkpointing(model) == 0:
        raise ValueError(
            f"train.activation_checkpointing=true, but model {name} has no set_grad_checkpointing switch "
            "and no `blocks` lists to wrap"
        )


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


def _gather(world: int, value) -> list:
    """Every rank's `value`, in rank order, on every rank (rank 0 saves them)."""
    if world == 1:
        return [value]
    values: list = [None] * world
    dist.all_gather_object(values, value)
    return values


def train_loop_per_worker(config: dict) -> None:
    """What each Ray Train worker runs. An exception leaves with its traceback as a note: Ray Train
    hands the controller the exception alone, and the run's failures.log records both."""
    try:
        _train_loop(config)
    except Exception as error:
        error.add_note(f"worker traceback:\n{traceback.format_exc().rstrip()}")
        raise


def _train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from spatiotemporal.train.logs import MetricsLog
    from spatiotemporal.train.progress import write_progress
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
        checkpoint_activations(model, config["model"]["name"])
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
    window = [0.0, 0.0, 0.0]  # loss sum, correct, count since the last log row
    restored = checkpoint_to_restore(ray.train.get_checkpoint(), config)
    if restored is not None:
        with restored.as_directory() as directory:
            position, saved_window = ckpt.load(Path(directory), rank, model, optimizer, schedule, ema)
        window = saved_window or window
    skipped = SkippedVideos()
    if rank == 0:
        if restored is None:  # a run that starts over lists afresh
            for listing in (SKIPPED_FILE, FEED_FILE):
                (run_dir / listing).unlink(missing_ok=True)
        origin = None if restored is None else Path(restored.path).name
        ckpt.drop_unregistered(run_dir, {*config["_checkpoints_at_start"], origin}, position.step)
        record_attempt(run_dir, position.step, origin)
    ddp_model = ray.train.torch.prepare_model(model)

    log = MetricsLog(run_dir, resume_step=position.step if restored is not None else None) if rank == 0 else None
    def progress(**postfix: str) -> None:  # drawn by `fit`'s process (see progress.py)
        if rank == 0:
            write_progress(run_dir, position.step, total_steps, **postfix)

    progress()
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if tcfg["bf16"] else contextlib.nullcontext()
    )
    started = time.perf_counter() - position.elapsed_s

    def report(epoch_metrics: dict | None) -> None:
        position.elapsed_s = time.perf_counter() - started
        rng_states, windows, skipped_by_rank = zip(*_gather(world, (ckpt.rng_state(), list(window), skipped.take())))
        metrics = {"step": position.step, "epoch": position.epoch, **(epoch_metrics or {})}
        if rank == 0:
            record_skipped(run_dir, [line for lines in skipped_by_rank for line in lines])
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as directory:
            ckpt.save(
                Path(directory), list(rng_states), position, model, optimizer, schedule, ema, config,
                class_names=task.class_names, windows=list(windows), model_meta=task.model_meta(),
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    for epoch in range(position.epoch, epochs):
        skip = position.batch_in_epoch if epoch == position.epoch else 0
        sampler.set_position(epoch, skip)
        if dcfg["feed"] == "ray":
            # Only the micro-batches the epoch's steps take: a tail that fills no whole step of
            # accumulation is not decoded (the DataLoader's is fetched, then left by the break).
            keys = list(sampler)[: (steps_per_epoch * accum - skip) * batch_size]
            loader = RayFeed(config, keys, len(train_set), batch_size, task.collate)
        else:
            loader = torch.utils.data.DataLoader(
                SeededSamples(train_set, config["seed"]),
                batch_size=batch_size,
                sampler=sampler,
                collate_fn=task.collate,
                num_workers=dcfg["loader_workers"],
                # Starting an iterator draws its workers' base seed; from the global generator that
                # draw would shift dropout and drop path after a mid-epoch resume, which starts the
                # epoch's iterator at another point of the stream.
                generator=torch.Generator().manual_seed(config["seed"] * 100_003 + epoch),
            )
        ddp_model.train()
        micro = skip
        for batch in loader:
            if micro >= steps_per_epoch * accum:
                break
            new_skipped = skipped.add(batch)  # a batch trained on: its broken videos are listed
            if dcfg["feed"] == "ray":
                warn_skipped(new_skipped)
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
                progress(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}")
            at_epoch_end = micro == steps_per_epoch * accum
            if tcfg["checkpoint_every"] and position.step % tcfg["checkpoint_every"] == 0 and not at_epoch_end:
                report(None)
            if tcfg["crash_at_step"] is not None and position.step == tcfg["crash_at_step"]:
                # A testing aid standing in for a machine lost mid-run: the workers fail at once.
                raise SimulatedCrash(f"crash_at_step={position.step} reached")

        if isinstance(loader, RayFeed):  # where this epoch's samples were decoded
            decoded_on = _gather(world, dict(loader.decoded_on))
            if rank == 0:
                record_feed(run_dir, epoch, decoded_on)
        position.epoch, position.batch_in_epoch = epoch + 1, 0
        epoch_metrics: dict = {}
        if (epoch + 1) % tcfg["eval_every"] == 0 or epoch + 1 == epochs:
            eval_model = ema.module if ema is not None else model
            progress(phase="evaluating")
            epoch_metrics = task.evaluate(eval_model, rank, world, run_dir if epoch + 1 == epochs else None)
            if log is not None:
                log.write({"split": "val", "step": position.step, "epoch": epoch + 1, **epoch_metrics})
        report(epoch_metrics)
        if epoch_metrics:
            progress(**{key: f"{value:.3f}" for key, value in epoch_metrics.items() if key in ("top1", "miou")})
    if log is not None:
        from spatiotemporal.train.logs import plot_curves

        log.close()
        plot_curves(log.path, run_dir / "curves.png")


def checkpoint_to_restore(latest, config: dict):
    """The checkpoint a worker starts from. `latest`: Ray Train's record of the run's latest.

    After a failure Ray Train restarts the workers and names the newest checkpoint this `fit`
    reported, which it registered only once written in full. Otherwise `fit` picked it on the driver
    (`_resume_dir`: the newest one that can be read, checked against the config, or None for a fresh
    start); Ray Train's record from an earlier `fit` of the run could name one a crash cut short.
    """
    import ray.train

    if latest is not None and Path(latest.path).name not in config["_checkpoints_at_start"]:
        return latest
    if config["_resume_dir"] is not None:
        return ray.train.Checkpoint.from_directory(config["_resume_dir"])
    return None


# What a run that failed before its first log row leaves behind: Ray Train writes its storage
# marker as it starts, rank 0 opens TensorBoard and records its progress; an empty metrics log.
# The controller records the failures that ended it, rank 0 where each attempt started.
RUN_LEFTOVERS = frozenset(
    {".validate_storage_marker", "checkpoint_manager_snapshot.json", "tensorboard", "metrics.jsonl", "progress.json",
     FAILURES_FILE, TRACEBACKS_FILE, ATTEMPTS_FILE}
)  # fmt: skip


def _clear_leftovers(run_dir: Path) -> None:
    for name in RUN_LEFTOVERS - {".validate_storage_marker"}:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def start_point(run_dir: Path, resume: bool, config: dict) -> Path | None:
    """Where a run in `run_dir` starts: the checkpoint to resume from, or None for the beginning.

    A run is a directory with a checkpoint or logged metrics; a fresh start refuses to overwrite one.
    What a run that failed before it logged anything leaves (see RUN_LEFTOVERS) is not a run: it is
    cleared and the run starts fresh. `--resume` continues from the newest checkpoint that can be
    read (saying which newer ones could not), checked against the config (`check_resumable`); with
    no checkpoint yet it starts from the beginning and says so.
    """
    entries = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    checkpoints = any(name.startswith("checkpoint_") and (run_dir / name).is_dir() for name in entries)
    metrics = run_dir / "metrics.jsonl"
    logged = metrics.is_file() and metrics.stat().st_size > 0
    if resume and checkpoints:
        directory, state, notes = ckpt.resume_point(run_dir)
        notes += ckpt.check_resumable(directory, state["config"], config)
        for note in notes:
            print(f"note: {note}")
        return directory
    if resume:
        if entries:
            cleared = " (the metrics it logged are cleared)" if logged else ""
            print(f"note: {run_dir} has no checkpoint yet; --resume starts the run from the beginning{cleared}")
        _clear_leftovers(run_dir)
        return None
    if checkpoints or logged:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another name")
    strangers = sorted(entries - RUN_LEFTOVERS)
    if strangers:
        listed = ", ".join(strangers[:5])
        raise FileExistsError(f"{run_dir} holds files that are not a run's ({listed}); choose another name")
    _clear_leftovers(run_dir)
    return None


def check_cluster_fits(rcfg: dict, cluster: dict, decode: dict | None = None) -> None:
    """Refuses workers the Ray cluster (`ray.cluster_resources()`) has no room for: Ray Train would
    wait for them forever. With `decode` (one decode task's resources, data.feed=ray), the CPUs
    must also leave room for one decode task beside the workers, or the feed would wait forever."""
    workers = rcfg["num_workers"]
    if decode is not None:
        trainers = workers * float(rcfg["resources_per_worker"].get("CPU", 1))
        if trainers + decode_cpus(decode) > cluster.get("CPU", 0.0):
            raise ValueError(
                f"the Ray cluster has {cluster.get('CPU', 0.0):g} CPU, the training workers hold {trainers:g} and "
                f"data.feed=ray needs {decode_cpus(decode):g} more for a decode task; lower ray.num_workers or "
                "ray.resources_per_worker, or join a cluster with more CPUs"
            )
    per_worker = {key: float(value) for key, value in rcfg["resources_per_worker"].items()}
    if rcfg["use_gpu"]:
        per_worker.setdefault("GPU", 1.0)  # Ray Train's default for use_gpu
    for key, amount in per_worker.items():
        if amount * workers > cluster.get(key, 0.0):
            if key == "GPU":
                fix = "set ray.use_gpu=false or join a cluster with GPUs"
            else:
                fix = "lower ray.num_workers or ray.resources_per_worker"
            raise ValueError(
                f"the Ray cluster has {cluster.get(key, 0.0):g} {key}, the training workers need "
                f"{amount * workers:g} (ray.num_workers={workers} x {amount:g} {key}); {fix}"
            )


def fit(config: dict, resume: bool = False, address: str | None = None) -> dict:
    """Train on Ray Train's TorchTrainer; returns the last validation row of metrics.jsonl.

    `address` (or RAY_ADDRESS) joins an existing cluster; otherwise a local one is started and
    shut down afterwards. The run lives in `output_dir/name`: checkpoints, metrics.jsonl,
    tensorboard/, curves.png and the evaluation reports.

    The console shows one progress bar (drawn here from rank 0's progress.json), the workers' own
    output, and Ray's warnings and errors; Ray's and Ray Train's INFO lines stay in the session's
    log files (see ray_console.py, ray_env.py).
    """
    from spatiotemporal.ray_console import quiet_ray_console

    with quiet_ray_console():
        return _fit(config, resume, address)


def _fit(config: dict, resume: bool, address: str | None) -> dict:
    """The body of `fit`, run while Ray's console is quieted."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from spatiotemporal.cluster import cluster_address, start_ray
    from spatiotemporal.train.config import check_data_root
    from spatiotemporal.train.logs import read_metrics
    from spatiotemporal.train.progress import FollowProgress
    from spatiotemporal.train.tasks import share_config_weights

    os.environ.setdefault(HEALTH_CHECK_INTERVAL, DEFAULT_HEALTH_CHECK_INTERVAL_S)
    storage = Path(config["output_dir"]).resolve()
    run_dir = storage / config["name"]
    # Ray Train workers run in their own working directory, so a path relative to the caller's
    # would name nothing there: every path crosses over resolved.
    data = {**config["data"], "root": str(check_data_root(config))}
    loop_config = {**config, "data": data, "output_dir": str(storage), "_run_dir": str(run_dir), "_resume_dir": None}
    # Everything that can be decided before Ray starts is: a mistake costs seconds, not a cluster.
    start = start_point(run_dir, resume, loop_config)
    loop_config["_resume_dir"] = None if start is None else str(start)
    loop_config["_checkpoints_at_start"] = sorted(p.name for p in run_dir.glob("checkpoint_*"))
    max_failures(config["train"]["max_failures"], joined=False)  # a bad count is refused before Ray starts
    rcfg = config["ray"]
    address = address or rcfg["address"]

    joined = not ray.is_initialized() and cluster_address(address) is not None
    dcfg = config["data"]
    # The local cluster's CPUs are logical: enough for the workers and, with data.feed=ray, their
    # decode tasks, which the operating system then shares out over the machine's cores.
    decoding = dcfg["decode_tasks"] * decode_cpus(dcfg["decode_resources"]) if dcfg["feed"] == "ray" else 0
    trainers = rcfg["num_workers"] * int(rcfg["resources_per_worker"].get("CPU", 1))
    cpus = max(os.cpu_count() or 1, trainers + int(np.ceil(rcfg["num_workers"] * decoding)))
    # A cluster the run cannot join is one line (start_ray checks it: not Ray's C++ retries) and
    # leaves no run directory.
    started_here = start_ray(
        address,
        local={"num_cpus": cpus, "include_dashboard": False,
               "runtime_env": train_runtime_env(local_without_dashboard=True)},
        runtime_env=train_runtime_env(local_without_dashboard=False),
    )  # fmt: skip
    # Ray already running in this process counts as joined where it spans several nodes.
    joined = joined or sum(1 for node in ray.nodes() if node["Alive"]) > 1
    restarts = max_failures(config["train"]["max_failures"], joined=joined)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for record in (FAILURES_FILE, TRACEBACKS_FILE, ATTEMPTS_FILE):  # each fit of the run records its own
            (run_dir / record).unlink(missing_ok=True)
        decode = None
        if dcfg["feed"] == "ray":
            decode, note = decode_placement(dcfg["decode_resources"], live_nodes())
            if note:
                print(note, file=sys.stderr)
            loop_config["_decode_note"] = note
        check_cluster_fits(rcfg, ray.cluster_resources(), decode)
        # Published weights to fine-tune from: fetched here once, then at most once per node.
        loop_config = share_config_weights(loop_config)
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
                # A restart that cannot place its workers (a lost node and none to take its place)
                # waits Ray Train's start timeout, then counts as the controller's failure: as many
                # of those as of the workers' own, so a run with nowhere to go ends with the reason.
                failure_config=ray.train.FailureConfig(max_failures=restarts, controller_failure_limit=restarts),
                callbacks=[RecordFailures(str(run_dir), restarts)],
                # Ray Train's INFO lines (worker group started, "Checkpoint successfully created",
                # "Reporting training result" per report) go to its system log files only.
                logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            ),
        )
        with FollowProgress(run_dir, f"train {config['name']}"):
            try:
                trainer.fit()
            except ray.train.TrainingFailedError as error:
                raise stopped(error, run_dir, config["name"]) from None
    finally:
        if started_here:
            ray.shutdown()
    rows = read_metrics(run_dir / "metrics.jsonl")
    val = [r for r in rows if r.get("split") == "val"]
    return val[-1] if val else {}
