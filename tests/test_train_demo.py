"""`spatiotemporal demo` re-runs: a demo run continues only from a checkpoint, data whose writing
was interrupted is written again, each budget's batch inference is its own and is redone for another
checkpoint, and the demo lists where its reports and pictures are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipelines.job import JOB_FILE
from spatiotemporal.commands.demo import run_inference_stage
from spatiotemporal.train.demo import QUICK, _points_data, prepare_demo_run, run_outputs


def test_an_interrupted_first_demo_run_is_started_over(tmp_path):
    run = tmp_path / "runs" / "demo_timesformer"
    run.mkdir(parents=True)
    (run / ".validate_storage_marker").write_text("")  # all Ray Train had written
    (run / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 10, "loss": 1.0}) + "\n")
    assert prepare_demo_run(run) is False
    assert not run.exists()


def test_a_demo_run_with_a_checkpoint_is_continued_as_it_is(tmp_path):
    run = tmp_path / "runs" / "demo_timesformer"
    (run / "checkpoint_2026-01-01_00-00-00.000000").mkdir(parents=True)
    (run / "checkpoint_2026-01-01_00-00-00.000000" / "position.json").write_text('{"step": 6, "epoch": 3, "batch_in_epoch": 0}')
    (run / "metrics.jsonl").write_text("")
    assert prepare_demo_run(run) is True
    assert (run / "metrics.jsonl").exists()


def test_a_first_demo_has_nothing_to_clear(tmp_path):
    assert prepare_demo_run(tmp_path / "runs" / "demo_timesformer") is False


def test_the_outputs_of_a_run_are_listed_reports_first(tmp_path):
    for name in ("metrics.jsonl", "curves.png", "eval_scannet.md", "eval_scannet.json", "scene0003_00_top_down.png"):
        (tmp_path / name).write_text("")
    (tmp_path / "submission").mkdir()
    (tmp_path / "checkpoint_2026-01-01_00-00-00.000000").mkdir()
    names = [path.name for path in run_outputs(tmp_path)]
    assert names == ["eval_scannet.md", "scene0003_00_top_down.png", "curves.png", "submission", "metrics.jsonl"]


class Interrupted(Exception):
    """Stands for the demo being stopped (Ctrl-C, a killed machine) partway through writing its data."""


def test_point_data_whose_writing_was_interrupted_is_written_again(tmp_path, monkeypatch):
    import spatiotemporal.io.points as points

    budget = dataclasses.replace(QUICK, train_rooms=1, val_rooms=2)
    write_preprocessed, written = points.write_preprocessed, []

    def interrupted_at_the_second_held_out_room(folder, cloud):
        if len(written) == 2:
            raise Interrupted
        write_preprocessed(folder, cloud)
        written.append(folder)

    monkeypatch.setattr(points, "write_preprocessed", interrupted_at_the_second_held_out_room)
    root = tmp_path / "synthetic_scannet_quick"
    with pytest.raises(Interrupted):
        _points_data(root, budget)
    monkeypatch.undo()
    assert not root.exists()
    _points_data(root, budget)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["scene0000_00"]
    assert sorted(p.name for p in (root / "val").iterdir()) == ["scene0000_00", "scene0001_00"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_scannet_quick"]


VIDEO_MODEL = "timesformer_tiny"


def test_each_budget_predicts_into_its_own_folder(ray_cluster, tiny_kinetics, two_checkpoints, tmp_path):
    """A quick demo and a learning one in one --out: the learning one resumes nothing of the quick one's."""
    checkpoint, _ = two_checkpoints
    quick, _ = run_inference_stage(tmp_path, "quick", tiny_kinetics, VIDEO_MODEL, checkpoint, shared=[])
    learn, report = run_inference_stage(tmp_path, "learn", tiny_kinetics, VIDEO_MODEL, checkpoint, shared=[])
    assert (quick.ok, quick.failed, quick.skipped) == (learn.ok, learn.failed, learn.skipped) == (4, 1, 0)
    assert (quick.output, learn.output) == (str(tmp_path / "inference_quick"), str(tmp_path / "inference_learn"))
    assert report[0].startswith("4 ok, 1 failed of 5 inputs; top-1 ")


def test_predictions_made_with_another_checkpoint_are_made_again(ray_cluster, tiny_kinetics, two_checkpoints, tmp_path):
    first, retrained = two_checkpoints
    run_inference_stage(tmp_path, "learn", tiny_kinetics, VIDEO_MODEL, first, shared=[])
    again, _ = run_inference_stage(tmp_path, "learn", tiny_kinetics, VIDEO_MODEL, retrained, shared=[])
    assert (again.ok, again.failed, again.skipped) == (4, 1, 0)
    made_with = json.loads((tmp_path / "inference_learn" / JOB_FILE).read_text())
    assert made_with["checkpoint"] == str(retrained)


def test_a_resumed_stage_reports_the_inputs_it_lists_and_no_others(
    ray_cluster, tiny_kinetics, two_checkpoints, video_dir, tmp_path
):
    """The first run also had a real clip; the second, with the same checkpoint, resumes and lists
    the held-out clips and the truncated one only."""
    checkpoint, _ = two_checkpoints
    run_inference_stage(tmp_path, "learn", tiny_kinetics, VIDEO_MODEL, checkpoint, shared=[video_dir / "flipping_a_pancake.mkv"])
    resumed, report = run_inference_stage(tmp_path, "learn", tiny_kinetics, VIDEO_MODEL, checkpoint, shared=[])
    assert (resumed.ok, resumed.failed, resumed.skipped) == (0, 0, 5)
    assert report[0].startswith("4 ok, 1 failed of 5 inputs; top-1 ")
    assert sum(int(kind.rsplit(" ", 1)[1]) for kind in report[1].removeprefix("predicted: ").split(", ")) == 4
    assert len(report) == 3 and report[2].startswith("failed: truncated.mp4: ")
