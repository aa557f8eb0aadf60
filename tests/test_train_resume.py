"""Training on Ray Train: a run killed after N steps and resumed ends exactly where an
uninterrupted run of the same seed ends; logs, curves and checkpoints are written; a run that
failed before its first checkpoint does not hold on to its name."""

from __future__ import annotations

import json

import pytest

from spatiotemporal.train import checkpoint as ckpt
from spatiotemporal.train.logs import read_metrics
from spatiotemporal.train.loop import fit
from spatiotemporal.train.optim import cosine_with_warmup
from tests.train_runs import RANDOM_LAYERS, assert_trained_alike, tiny_run_config


@pytest.mark.slow
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tiny_kinetics, train_ray_cluster, tmp_path):
    # 16 videos / (2 workers x batch 2) = 4 micro-batches = 2 steps per epoch; 4 steps in all.
    straight = fit(tiny_run_config(tiny_kinetics, tmp_path, "straight", *RANDOM_LAYERS))
    with pytest.raises(Exception, match="crash_at_step=3"):
        fit(tiny_run_config(tiny_kinetics, tmp_path, "resumed", *RANDOM_LAYERS, "train.crash_at_step=3"))
    assert ckpt.step_of(ckpt.latest_checkpoint(tmp_path / "resumed")) == 3  # mid-epoch, after an unlogged step
    saved_elapsed = json.loads((ckpt.latest_checkpoint(tmp_path / "resumed") / "position.json").read_text())["elapsed_s"]
    resumed = fit(tiny_run_config(tiny_kinetics, tmp_path, "resumed", *RANDOM_LAYERS), resume=True)

    assert straight["step"] == resumed["step"] == 4
    assert_trained_alike(tmp_path / "straight", tmp_path / "resumed", straight, resumed)
    # The training clock carries over the resume: step 2 was logged before the step-3 checkpoint,
    # step 4 after the resume, which starts counting from that checkpoint's time.
    rows = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    elapsed = {r["step"]: r["elapsed_s"] for r in rows if r["split"] == "train"}
    assert elapsed[2] <= saved_elapsed < elapsed[4]


@pytest.mark.slow
def test_a_run_writes_jsonl_tensorboard_curves_and_a_kinetics_report(tiny_kinetics, train_ray_cluster, tmp_path):
    fit(tiny_run_config(tiny_kinetics, tmp_path, "logs", "schedule.epochs=1", "train.bf16=true", "train.activation_checkpointing=true"))
    run = tmp_path / "logs"
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["split"] for r in rows] == ["train", "train", "val"]
    assert (run / "curves.png").stat().st_size > 1000
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    report = (run / "eval_kinetics.md").read_text()
    assert "4 annotated videos, 4 evaluated, 0 missing" in report  # val: 2 per class
    assert (run / "confusion.png").exists()


def test_paths_relative_to_the_callers_directory_reach_the_workers(tiny_kinetics, train_ray_cluster, tmp_path, monkeypatch):
    """Ray Train workers run in a directory of their own; `make demo` passes relative paths."""
    import os

    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(tiny_kinetics, tmp_path)
    assert not os.path.isabs(relative)
    final = fit(tiny_run_config(relative, "runs", "relative", "schedule.epochs=1"))
    assert final["num_evaluated"] == 4
    assert (tmp_path / "runs" / "relative" / "eval_kinetics.md").is_file()


def test_a_fresh_run_refuses_to_overwrite_an_existing_one(tiny_kinetics, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.jsonl").write_text('{"split": "train", "step": 10, "loss": 1.0}\n')
    with pytest.raises(FileExistsError, match="--resume"):
        fit(tiny_run_config(tiny_kinetics, tmp_path, "taken"))


@pytest.mark.slow
def test_a_run_that_failed_before_its_first_checkpoint_can_start_again_under_its_name(tiny_kinetics, train_ray_cluster, tmp_path):
    with pytest.raises(Exception, match="crash_at_step=1"):
        fit(tiny_run_config(tiny_kinetics, tmp_path, "again", "train.log_every=10", "train.checkpoint_every=0", "train.crash_at_step=1"))
    assert (tmp_path / "again" / ".validate_storage_marker").exists()  # Ray Train's, written at once
    final = fit(tiny_run_config(tiny_kinetics, tmp_path, "again", "schedule.epochs=1"))
    assert final["step"] == 2 and final["num_evaluated"] == 4


@pytest.mark.slow
def test_resume_after_an_unreadable_checkpoint_and_with_more_epochs_follows_the_new_schedule(
    tiny_kinetics, train_ray_cluster, tmp_path, capsys
):
    fit(tiny_run_config(tiny_kinetics, tmp_path, "longer", "schedule.epochs=1"))  # checkpoints at steps 1 and 2
    newest = ckpt.latest_checkpoint(tmp_path / "longer")
    (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:1000])
    final = fit(tiny_run_config(tiny_kinetics, tmp_path, "longer", "schedule.epochs=3"), resume=True)
    notes = capsys.readouterr().out
    assert f"note: {newest / 'state.pt'}: cannot be read" in notes and "resuming from an earlier checkpoint" in notes
    assert "note: schedule.epochs changes from 1 to 3; the resumed run follows the config" in notes
    assert final["step"] == 6
    # Steps 2-6 (the lr a row reports is the one its step took) follow the 6-step schedule, warmup 1 step.
    rows = [r for r in read_metrics(tmp_path / "longer" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows[1:]:
        assert row["lr"] == pytest.approx(cosine_with_warmup(row["step"] - 1, 6, 1, 1e-3, 1e-6), rel=1e-12)


def test_workers_the_cluster_has_no_gpus_for_are_refused_instead_of_awaited(tiny_kinetics, train_ray_cluster, tmp_path):
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    with pytest.raises(ValueError, match=rf"the Ray cluster has {gpus} GPU, the training workers need {gpus + 1} "):
        fit(tiny_run_config(tiny_kinetics, tmp_path, "gpu", "ray.use_gpu=true", f"ray.num_workers={gpus + 1}"))
