"""What `train` and `demo --quick` print: one progress bar per stage and our own lines. Ray's INFO
lines, Ray Train's start-up and per-report lines ("Checkpoint successfully created", "Reporting
training result") and the workers' bars, each update a line prefixed with the worker's pid, stay in
the Ray session's log files. (The pipelines' consoles: test_pipelines_console.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from console_output import RAY_DATA_ACTOR_POOL_LINE, console_segments, foreign_lines

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv/bin/spatiotemporal")


GLUED_CORE_WORKER_LINE = (
    "[2026-12-07 04:38:32,920 E 1924 4312] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches(Predictor))'"
    " and ID: '30023351cb26976864c1b38d01000000' has constructor arguments in the object store and max_restarts > 0."
)


def test_a_foreign_line_glued_onto_a_progress_bar_is_not_taken_for_the_bar():
    glued = "video-inference:   0%|          | 0/21 [00:00<?, ?input/s][2026-12-07 04:38:32,920 E 1924 4312] raylet.cc:7: lost"
    assert foreign_lines(glued, bars=["video-inference"]) == ["[2026-12-07 04:38:32,920 E 1924 4312] raylet.cc:7: lost"]


def test_each_redraw_of_a_bar_is_checked_and_a_bars_padding_is_its_own():
    console = (
        "train tiny:  50%|█████     | 1/2 [00:01<00:01,  1.00step/s, loss=1.455, acc=0.25]\r"
        "train tiny: 100%|██████████| 2/2 [00:02<00:00,  1.00step/s, top1=0.250]      \r"
        "(RayTrainWorker pid=123) Reporting training result 2\n"
    )
    assert foreign_lines(console, bars=["train tiny"]) == ["(RayTrainWorker pid=123) Reporting training result 2"]


def test_an_allowed_line_glued_onto_a_bar_is_allowed_and_the_bar_is_still_ours():
    glued = "video-inference:   0%|          | 0/21 [00:00<?, ?input/s]" + GLUED_CORE_WORKER_LINE
    assert foreign_lines(glued, bars=["video-inference"], allowed=[RAY_DATA_ACTOR_POOL_LINE]) == []
    assert foreign_lines(glued, bars=["video-inference"]) == [GLUED_CORE_WORKER_LINE]


def test_a_line_that_only_starts_with_a_bars_name_is_not_a_bar():
    assert foreign_lines("video-inference: something Ray said", bars=["video-inference"]) == [
        "video-inference: something Ray said"
    ]


def test_the_worker_hook_quiets_ray_trains_report_logger_without_importing_ray_train():
    """The hook runs in every Ray worker; importing Ray Train there would cost each worker's start."""
    code = (
        "import logging, sys\n"
        "from spatiotemporal.train.ray_env import quiet_worker_logs\n"
        "quiet_worker_logs()\n"
        "imported = 'ray.train' in sys.modules\n"
        "from ray.train.v2._internal.execution import context\n"
        "print(imported, logging.getLevelName(logging.getLogger(context.__file__).level))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout == "False WARNING\n", run.stderr


def test_train_prints_its_progress_bar_and_its_results_and_nothing_of_rays(tiny_kinetics, tmp_path):
    run = subprocess.run(
        [CLI, "train", str(ROOT / "configs/timesformer_tiny_synthetic_kinetics.yaml"), "name=tiny",
         f"output_dir={tmp_path}", f"data.root={tiny_kinetics}",
         "model.kwargs={num_frames: 4, image_size: 32, patch_size: 16, embed_dim: 32, depth: 2, num_heads: 2}",
         "data.num_frames=4", "data.batch_size=2", "schedule.epochs=2", "train.eval_every=1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    run_dir = tmp_path / "tiny"
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["split"] == "val"
    assert run.stdout == (
        json.dumps(final, indent=2) + "\n" + (run_dir / "eval_kinetics.md").read_text() + "\n"
        + f"run directory: {run_dir} (metrics.jsonl, tensorboard/, curves.png, checkpoints)\n"
    )  # fmt: skip
    assert foreign_lines(run.stderr, bars=["train tiny"]) == [], run.stderr
    lines = console_segments(run.stderr)
    assert lines[-1].startswith("train tiny: 100%|") and f"top1={final['top1']:.3f}" in lines[-1]


def test_demo_quick_prints_its_stages_bars_and_summary_and_nothing_of_rays(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([CLI, "demo", "--quick", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    bars = ["synthetic kinetics", "synthetic scenes", "train demo_quick_timesformer", "video-inference",
            "train demo_quick_point_transformer"]  # fmt: skip
    summaries = [r"video-inference: \d+ ok, \d+ failed, \d+ skipped of \d+ inputs in .*"]
    assert foreign_lines(run.stderr, bars, summaries, allowed=[RAY_DATA_ACTOR_POOL_LINE]) == [], run.stderr
    stdout = run.stdout.splitlines()
    ours = re.compile(r"(== |[123]/3 |    |  /|pictures:$|reports and tables:$|quick run: |$)")
    assert [line for line in stdout if not ours.match(line)] == [], run.stdout
    stages = [line for line in stdout if line.startswith("== ")]
    assert stages[:3] == [
        "== 1/3 train + evaluate tiny timesformer on motion-only synthetic Kinetics",
        "== 2/3 batch inference with the trained model (Ray video-inference pipeline)",
        "== 3/3 train + evaluate tiny Point Transformer on synthetic ScanNet rooms",
    ]
    assert len(stages) == 4 and stages[3].startswith("== demo summary (quick budget, ")
    assert "quick run: each model trained for seconds, so its figures are at chance by design;" in run.stdout
    assert f"  {out / 'runs/demo_quick_timesformer/confusion.png'}" in stdout
    assert f"  {out / 'runs/demo_quick_point_transformer/scene0000_00_top_down.png'}" in stdout
