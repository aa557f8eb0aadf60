"""`spatiotemporal demo` re-runs: a demo run continues only from a checkpoint, and the demo lists
where its reports and pictures are."""

from __future__ import annotations

import json

from spatiotemporal.train.demo import prepare_demo_run, run_outputs


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
