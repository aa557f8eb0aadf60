"""What a user sees when the model fails inside Ray's workers: the job's progress bar, its summary
and one error line -- not the worker's traceback, which Ray's error listener used to print to
stdout (about 145 lines) while the actor it could not build was being retried."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from console_output import RAY_DATA_ACTOR_POOL_LINE, foreign_lines

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv/bin/spatiotemporal")


def job_foreign_lines(stderr: str, job: str) -> list[str]:
    """The parts of a job's stderr that the job did not write: its bar, its summary line and its
    notes are its own; Ray Data's actor-pool line is allowed (see RAY_DATA_ACTOR_POOL_LINE)."""
    summary = rf"{re.escape(job)}: \d+ ok, \d+ failed, \d+ skipped of \d+ inputs in .*"
    return foreign_lines(stderr, bars=[job], lines=[summary, r"note: .*"], allowed=[RAY_DATA_ACTOR_POOL_LINE])


def test_a_model_failing_in_the_workers_prints_one_error_line_and_no_traceback(video_dir, misfitting_checkpoint, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pancake.mkv").symlink_to(video_dir / "flipping_a_pancake.mkv")
    checkpoint = misfitting_checkpoint
    run = subprocess.run(
        [CLI, "pipeline", "video-inference", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--model", "vivit_tiny", "--checkpoint", str(checkpoint), "--views", "1x1", "--num-cpus", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert "Traceback" not in run.stderr and len(lines) <= 8, run.stderr
    assert lines[-2].startswith("video-inference: 0 ok, 1 failed, 0 skipped of 1 inputs in ")
    assert lines[-1].startswith(
        f"error: video-inference aborted: CheckpointError: {checkpoint}: spatiotemporal checkpoint does not fit vivit"
    )
    assert "video-inference:   0%|" in run.stderr  # the job's own progress bar still draws


def test_a_clean_run_prints_the_progress_bar_and_the_summary_and_no_ray_notices(video_dir, tmp_path):
    """Two workers asked for, one input: one actor starts (Ray Data warned about the idle one), and
    Ray's start-up notices (its INFO lines, the token-authentication default) stay out of the way.
    Ray's core worker still logs one line from C++ per actor pool, whose actors Ray may restart (see
    RAY_DATA_ACTOR_POOL_LINE); it is the only foreign line allowed."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pancake.mkv").symlink_to(video_dir / "flipping_a_pancake.mkv")
    run = subprocess.run(
        [CLI, "pipeline", "video-inference", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--model", "vivit_tiny", "--random-weights", "--views", "1x1", "--workers", "2", "--num-cpus", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert job_foreign_lines(run.stderr, "video-inference") == [], run.stderr
    assert run.stderr.rstrip().splitlines()[-1].startswith("video-inference: 1 ok, 0 failed, 0 skipped of 1 inputs in ")


def test_a_clean_point_inference_run_prints_the_progress_bar_and_the_summary_and_no_ray_notices(points_dir, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "room.ply").symlink_to(points_dir / "livingroom_fragment.ply")
    run = subprocess.run(
        [CLI, "pipeline", "point-inference", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--model", "point_transformer_tiny", "--random-weights", "--num-cpus", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert job_foreign_lines(run.stderr, "point-inference") == [], run.stderr
    assert run.stderr.rstrip().splitlines()[-1].startswith("point-inference: 1 ok, 0 failed, 0 skipped of 1 inputs in ")


def test_a_clean_tokenize_run_prints_the_progress_bar_and_the_summary_and_no_ray_notices(video_dir, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pancake.mkv").symlink_to(video_dir / "flipping_a_pancake.mkv")
    run = subprocess.run(
        [CLI, "pipeline", "tokenize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--num-cpus", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert job_foreign_lines(run.stderr, "tokenize") == [], run.stderr
    assert run.stderr.rstrip().splitlines()[-1].startswith("tokenize: 1 ok, 0 failed, 0 skipped of 1 inputs in ")
