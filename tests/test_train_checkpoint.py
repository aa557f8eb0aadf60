"""Training checkpoints as `fit` reads them before any worker starts: where a run starts, which
checkpoint it resumes from, what a resumed run keeps and what it takes from its new config."""

from __future__ import annotations

import json

import pytest
import torch

from spatiotemporal.io.errors import CheckpointError
from spatiotemporal.models import create_model
from spatiotemporal.train import checkpoint as ckpt
from spatiotemporal.train.config import load_config
from spatiotemporal.train.loop import check_cluster_fits, fit, start_point
from spatiotemporal.train.optim import CosineWarmupSchedule, build_optimizer, cosine_with_warmup
from spatiotemporal.train.tasks import PointsTask

TINY = "{num_frames: 4, image_size: 32, patch_size: 16, embed_dim: 32, depth: 2, num_heads: 2}"


def video_config(tmp_path, *overrides: str) -> dict:
    (tmp_path / "data").mkdir(exist_ok=True)
    return load_config(
        data={"model": {"name": "timesformer_tiny"}},
        overrides=[f"model.kwargs={TINY}", f"output_dir={tmp_path / 'runs'}", "name=run",
                   f"data.root={tmp_path / 'data'}", "ray.num_workers=1", *overrides],
    )  # fmt: skip


def trained(config: dict, steps: int = 3, total_steps: int = 8):
    """A model, optimizer and schedule `steps` optimizer steps into a run of `total_steps`."""
    torch.manual_seed(0)
    model = create_model(config["model"]["name"], num_classes=2, **config["model"]["kwargs"])
    optimizer = build_optimizer(model, config["optim"])
    schedule = CosineWarmupSchedule(optimizer, total_steps, 2, config["optim"]["lr"], config["schedule"]["min_lr"])
    for _ in range(steps):
        schedule.apply()
        model(torch.randn(1, 3, 4, 32, 32)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    return model, optimizer, schedule


def save_checkpoint(directory, config, step: int = 3, windows=None) -> None:
    model, optimizer, schedule = trained(config, steps=step)
    position = ckpt.Position(step=step, epoch=1, batch_in_epoch=2)
    ckpt.save(directory, [ckpt.rng_state()], position, model, optimizer, schedule, None, config, windows=windows)


# -- where a run starts


def test_what_a_run_that_failed_at_once_leaves_is_cleared_and_the_name_is_free_again(tmp_path):
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"\0")
    (run / ".validate_storage_marker").write_text("")  # Ray Train writes it as the run starts
    assert start_point(run, resume=False, config={}) is None
    assert sorted(p.name for p in run.iterdir()) == [".validate_storage_marker"]


def test_resume_with_no_checkpoint_yet_starts_from_the_beginning_and_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".validate_storage_marker").write_text("")
    (run / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 10, "loss": 1.0}) + "\n")
    assert start_point(run, resume=True, config={}) is None
    assert capsys.readouterr().out == (
        f"note: {run} has no checkpoint yet; --resume starts the run from the beginning "
        "(the metrics it logged are cleared)\n"
    )
    assert not (run / "metrics.jsonl").exists()


def test_a_fresh_start_refuses_a_run_that_logged_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 10, "loss": 1.0}) + "\n")
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        start_point(run, resume=False, config={})


def test_a_fresh_start_refuses_a_directory_of_other_files_and_deletes_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files that are not a run's \(notes.txt\)"):
        start_point(run, resume=False, config={})
    assert (run / "notes.txt").read_text() == "mine"


# -- which checkpoint a resumed run starts from


def test_resume_passes_over_an_unreadable_newest_checkpoint_and_says_so(tmp_path, capsys):
    config = video_config(tmp_path)
    run = tmp_path / "runs" / "run"
    save_checkpoint(run / "checkpoint_a", config, step=2)
    save_checkpoint(run / "checkpoint_b", config, step=3)
    state = run / "checkpoint_b" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # a copy cut short by a crash
    assert start_point(run, resume=True, config=config) == run / "checkpoint_a"
    assert capsys.readouterr().out == (
        f"note: {state}: cannot be read (PytorchStreamReader failed reading zip archive: "
        "failed finding central directory); resuming from an earlier checkpoint\n"
    )


def test_a_run_whose_checkpoints_all_fail_to_read_names_them(tmp_path):
    config = video_config(tmp_path)
    run = tmp_path / "runs" / "run"
    save_checkpoint(run / "checkpoint_a", config)
    (run / "checkpoint_a" / "state.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"run: none of its 1 checkpoints can be read \(.*checkpoint_a/state.pt: cannot be read \(not a file torch.save wrote\)"):
        start_point(run, resume=True, config=config)


class RunsCode:
    """What a planted state.pt could hold: unpickling it calls a function of the author's choice."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_state_that_would_run_code_when_read_is_refused_and_runs_nothing(tmp_path, capsys):
    config = video_config(tmp_path)
    run = tmp_path / "runs" / "run"
    save_checkpoint(run / "checkpoint_a", config, step=2)
    save_checkpoint(run / "checkpoint_b", config, step=3)
    state = run / "checkpoint_b" / "state.pt"
    planted = torch.load(state, weights_only=False)
    planted["config"]["note"] = RunsCode(tmp_path / "ran")
    torch.save(planted, state)
    assert start_point(run, resume=True, config=config) == run / "checkpoint_a"
    assert capsys.readouterr().out == (
        f"note: {state}: holds objects other than tensors and plain values, which are not loaded; "
        "resuming from an earlier checkpoint\n"
    )
    with pytest.raises(Exception, match="Weights only load failed"):  # the workers' loader refuses it too
        ckpt.load_state_file(state)
    assert not (tmp_path / "ran").exists()


def test_a_saved_state_loads_through_the_safe_loader_with_its_rng_states(tmp_path):
    config = video_config(tmp_path)
    save_checkpoint(tmp_path / "checkpoint", config)
    state = ckpt.load_state_file(tmp_path / "checkpoint" / "state.pt")
    assert state["rng"][0]["numpy"][0] == "MT19937" and state["rng"][0]["numpy"][1].shape == (624,)


def test_resume_with_another_model_is_refused_before_ray_starts(tmp_path):
    import ray

    save_checkpoint(tmp_path / "runs" / "run" / "checkpoint_a", video_config(tmp_path))
    deeper = TINY.replace("depth: 2", "depth: 3")
    with pytest.raises(ValueError) as error:
        fit(video_config(tmp_path, f"model.kwargs={deeper}"), resume=True)
    assert str(error.value) == (
        f"checkpoint {tmp_path / 'runs' / 'run' / 'checkpoint_a'} holds model timesformer_tiny(depth=2, embed_dim=32, "
        "image_size=32, num_frames=4, num_heads=2, patch_size=16), the config asks for timesformer_tiny(depth=3, "
        "embed_dim=32, image_size=32, num_frames=4, num_heads=2, patch_size=16); resume with the same model or start a new run"
    )
    assert not ray.is_initialized()


@pytest.mark.parametrize(("override", "key"), [
    ("data.batch_size=4", "data.batch_size"),
    ("ray.num_workers=2", "ray.num_workers"),
    ("train.accum_steps=2", "train.accum_steps"),
    ("optim.name=sgd", "optim.name"),
])  # fmt: skip
def test_resume_refuses_changes_the_saved_position_or_optimizer_state_cannot_follow(tmp_path, override, key):
    directory = tmp_path / "runs" / "run" / "checkpoint_a"
    save_checkpoint(directory, video_config(tmp_path))
    with pytest.raises(ValueError, match=rf"^checkpoint {directory} was trained with {key}=.*a resumed run keeps it"):
        start_point(directory.parent, resume=True, config=video_config(tmp_path, override))


def test_resume_follows_a_changed_schedule_and_says_so(tmp_path, capsys):
    directory = tmp_path / "runs" / "run" / "checkpoint_a"
    save_checkpoint(directory, video_config(tmp_path))
    assert start_point(directory.parent, resume=True, config=video_config(tmp_path, "schedule.epochs=20")) == directory
    assert capsys.readouterr().out == "note: schedule.epochs changes from 10 to 20; the resumed run follows the config\n"


# -- what a resumed worker restores


def test_a_resumed_schedule_is_the_configs_at_the_restored_step(tmp_path):
    """A run of 8 steps saved at step 3 and resumed for 16 steps (twice the epochs) with another
    weight decay: the learning rate is the 16-step schedule's at step 3, the decay the new one,
    and the optimizer's moments are the saved ones."""
    config = video_config(tmp_path)
    save_checkpoint(tmp_path / "ckpt", config, step=3)
    saved = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=False)["optimizer"]
    longer = video_config(tmp_path, "optim.weight_decay=0.1")
    model, optimizer, _ = trained(longer, steps=0)
    schedule = CosineWarmupSchedule(optimizer, 16, 2, 1e-3, 1e-6)
    position, _ = ckpt.load(tmp_path / "ckpt", 0, model, optimizer, schedule, None)
    assert position == ckpt.Position(step=3, epoch=1, batch_in_epoch=2)
    assert schedule.apply() == cosine_with_warmup(3, 16, 2, 1e-3, 1e-6)
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.0, 0.1}
    first = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert torch.equal(first["exp_avg"], saved["state"][0]["exp_avg"]) and first["step"] == 3


def test_each_rank_gets_back_the_log_window_it_saved(tmp_path):
    config = video_config(tmp_path)
    save_checkpoint(tmp_path / "ckpt", config, windows=[[1.5, 2.0, 4.0], [0.5, 1.0, 4.0]])
    model, optimizer, schedule = trained(config, steps=0)
    assert ckpt.load(tmp_path / "ckpt", 1, model, optimizer, schedule, None)[1] == [0.5, 1.0, 4.0]


# -- what a checkpoint tells inference


def test_a_point_checkpoint_records_the_voxel_size_it_was_trained_at(tmp_path):
    from spatiotemporal.convert import read_checkpoint_meta

    config = load_config(data={"model": {"name": "point_transformer_tiny"}, "task": "points"},
                         overrides=["data.grid_size=0.05"])  # fmt: skip
    model = create_model("point_transformer_tiny")
    optimizer = build_optimizer(model, config["optim"])
    schedule = CosineWarmupSchedule(optimizer, 8, 2, 1e-3, 1e-6)
    ckpt.save(tmp_path, [ckpt.rng_state()], ckpt.Position(), model, optimizer, schedule, None, config,
              class_names=PointsTask(config).class_names, model_meta=PointsTask(config).model_meta())  # fmt: skip
    meta = read_checkpoint_meta(tmp_path / ckpt.MODEL_FILE)
    assert meta["grid_size"] == 0.05 and len(meta["class_names"]) == 20


def test_point_class_names_follow_the_heads_number_of_classes():
    from spatiotemporal.data.scannet import CLASS_NAMES

    def names(num_classes):
        config = load_config(data={"model": {"name": "point_transformer_tiny", "num_classes": num_classes}, "task": "points"})
        return PointsTask(config).class_names

    assert names(None) == names(20) == list(CLASS_NAMES)
    assert names(13) == [f"class_{i}" for i in range(13)]


# -- whether the cluster can hold the workers


def test_workers_the_cluster_cannot_place_are_refused_in_one_line():
    ray = {"num_workers": 2, "use_gpu": True, "resources_per_worker": {"CPU": 1}}
    with pytest.raises(ValueError) as error:
        check_cluster_fits(ray, {"CPU": 16.0, "memory": 1e10})
    assert str(error.value) == (
        "the Ray cluster has 0 GPU, the training workers need 2 (ray.num_workers=2 x 1 GPU); "
        "set ray.use_gpu=false or join a cluster with GPUs"
    )
    with pytest.raises(ValueError, match=r"has 2 CPU, the training workers need 8 \(ray.num_workers=2 x 4 CPU\)"):
        check_cluster_fits({**ray, "use_gpu": False, "resources_per_worker": {"CPU": 4}}, {"CPU": 2.0})
    check_cluster_fits(ray, {"CPU": 2.0, "GPU": 2.0})


def test_resume_takes_a_models_old_argument_name_for_the_same_model(tmp_path):
    # MViTv2's `img_size` is now `image_size`: a run saved under the old name is the same model.
    from spatiotemporal.train.checkpoint import check_resumable

    config = load_config(data={"model": {"name": "mvitv2_tiny", "kwargs": {"image_size": 32}}})
    stored = load_config(data={"model": {"name": "mvitv2_tiny", "kwargs": {"img_size": 32}}})
    assert check_resumable(tmp_path, stored, config) == []
    other = load_config(data={"model": {"name": "mvitv2_tiny", "kwargs": {"img_size": 48}}})
    with pytest.raises(ValueError, match="holds model mvitv2_tiny"):
        check_resumable(tmp_path, other, config)
