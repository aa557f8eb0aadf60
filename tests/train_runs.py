"""Tests' helpers for tiny TimeSformer runs on synthetic Kinetics: the config, and the check that
two runs of one seed (one of them interrupted) trained alike."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from spatiotemporal.convert import read_state_dict
from spatiotemporal.train.config import load_config
from spatiotemporal.train.logs import read_metrics
from spatiotemporal.train.progress import read_progress
from tests.ray_processes import wait_until

# Resumed and uninterrupted runs take the same steps on the same samples with the same RNG
# streams; only float summation order could differ, so the tolerance is tight.
TOLERANCE = 1e-6

# Dropout and drop path draw from each worker's torch generator, which a resumed run must take up
# where the killed one left it. Rows every 2 steps, so a run that dies between two rows must
# average the steps on either side of its death in the row after it.
RANDOM_LAYERS = (
    "model.kwargs={num_frames: 4, image_size: 32, patch_size: 16, embed_dim: 32, depth: 2, num_heads: 2, "
    "drop_rate: 0.1, attn_drop_rate: 0.1, drop_path_rate: 0.2}",
    "train.log_every=2",
)


def tiny_run_config(data, out, name, *extra):
    # Every optimisation feature whose state must survive a restart is switched on:
    # accumulation, EMA, mixup/cutmix RNG, label smoothing, clipping, warmup + cosine, LLRD.
    return load_config(
        data={"model": {"name": "timesformer_tiny"}},
        overrides=[
            f"name={name}", f"output_dir={out}", f"data.root={data}",
            "model.kwargs={num_frames: 4, image_size: 32, patch_size: 16, embed_dim: 32, depth: 2, num_heads: 2}",
            "data.num_frames=4", "data.frame_stride=2", "data.crop_size=32", "data.short_side=32",
            "data.batch_size=2", "data.hflip=false", "eval.views=1x1", "eval.batch_size=4",
            "optim.layer_decay=0.75", "schedule.epochs=2", "schedule.warmup_epochs=0.5",
            "train.accum_steps=2", "train.ema_decay=0.9", "train.mixup_alpha=0.8", "train.cutmix_alpha=1.0",
            "train.label_smoothing=0.1", "train.clip_grad=1.0", "train.log_every=1", "train.checkpoint_every=1",
            *extra,
        ],
    )  # fmt: skip


def final_weights(run_dir: Path) -> dict:
    final = max(run_dir.glob("checkpoint_*/position.json"), key=lambda p: json.loads(p.read_text())["step"])
    return read_state_dict(final.parent / "model.pt")


def assert_trained_alike(straight: Path, other: Path, straight_final: dict, other_final: dict) -> None:
    """`other` (interrupted, then continued) took each step once and ended where `straight` did:
    the same logged losses, validation metrics and final weights."""
    assert other_final["step"] == straight_final["step"]
    for key in ("top1", "top5", "mean_class_accuracy"):
        assert other_final[key] == pytest.approx(straight_final[key], abs=TOLERANCE)
    rows = {run: read_metrics(run / "metrics.jsonl") for run in (straight, other)}
    assert [r["step"] for r in rows[other]] == [r["step"] for r in rows[straight]]  # each step once
    for a, b in zip(rows[straight], rows[other]):
        if a["split"] == "train":
            assert b["loss"] == pytest.approx(a["loss"], abs=TOLERANCE)
    weights = {run: final_weights(run) for run in (straight, other)}
    for key, value in weights[straight].items():
        assert torch.allclose(weights[other][key], value, atol=TOLERANCE), key


# 16 videos / (2 workers x batch 2) = 4 micro-batches = 2 steps per epoch; 8 steps in all, a
# checkpoint after each, so a kill at step 3 or later lands mid-run with a checkpoint to go back to.
EPOCHS = "schedule.epochs=4"


def kill_when(run_dir: Path, step: int, kill) -> threading.Thread:
    """Calls `kill()` once rank 0 reports `step` (or a later one) in progress.json."""

    def watch() -> None:
        if wait_until(lambda: (read_progress(run_dir) or {}).get("step", 0) >= step, timeout_s=300):
            kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread
