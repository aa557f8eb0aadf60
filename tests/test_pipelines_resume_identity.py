"""A resume never mixes two models' rows: OUTDIR/job.json records what made them (the job, model,
checkpoint and its SHA-256, weights, views...), a resume made otherwise is refused in one line before
Ray starts with the earlier rows untouched, the same identity resumes, and an OUTDIR from before
job.json existed resumes as it did and gets one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from pipelines.inputs import list_inputs  # noqa: E402
from pipelines.job import JOB_FILE, JobIdentityError, read_table, run_job  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VIDEO_MODEL = "timesformer_tiny"
# Ray's workers cannot import this test module: its plans travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _echo(batch: dict) -> dict:
    """Every input succeeds except files named b.*, which fail."""
    names = [os.path.basename(str(p)) for p in batch["path"]]
    return {"id": batch["id"], "path": batch["path"], "error": np.array(["boom" if n.startswith("b.") else "" for n in names])}


def echo_plan(dataset):
    return dataset.map_batches(_echo, batch_format="numpy")


def job(items, out, identity, **kw):
    return run_job("t", items, out, echo_plan, progress=False, identity=identity, **kw)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its content, to see that nothing changed."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the shared mechanism (run_job) -------------------------------------------------------------


def test_a_resume_made_otherwise_is_refused_before_anything_runs(ray_cluster, tree):
    out = tree / "out"
    job(list_inputs(tree, (".mp4",)), out, {"model": "m", "checkpoint_sha256": "a" * 64})
    before = _files(out)
    with pytest.raises(JobIdentityError) as error:
        job(list_inputs(tree, (".mp4",)), out, {"model": "m", "checkpoint_sha256": "b" * 64})
    message = str(error.value)
    assert "\n" not in message
    assert message == (f"{out} holds rows made otherwise (checkpoint_sha256 {'a' * 12} there, {'b' * 12} now): "
                       "use --no-resume to redo them with this run's, or another --output")
    assert _files(out) == before


def test_another_job_into_the_same_outdir_is_refused(ray_cluster, tree):
    out = tree / "out"
    job(list_inputs(tree, (".mp4",)), out, {"model": "m"})
    with pytest.raises(JobIdentityError, match=r'job "t" there, "other" now'):
        run_job("other", list_inputs(tree, (".mp4",)), out, echo_plan, progress=False, identity={"model": "m"})


def test_the_same_identity_resumes_and_job_json_records_it(ray_cluster, tree):
    out = tree / "out"
    identity = {"model": "m", "views": (2, 3)}
    job(list_inputs(tree, (".mp4",)), out, identity)
    again = job(list_inputs(tree, (".mp4",)), out, identity)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 3)
    assert json.loads((out / JOB_FILE).read_text()) == {"job": "t", "model": "m", "views": [2, 3]}


def test_a_checkpoint_moved_elsewhere_is_the_same_model_and_resumes(ray_cluster, tree):
    """The checkpoint is compared by its SHA-256; its path is kept in job.json for the reader."""
    out = tree / "out"
    job(list_inputs(tree, (".mp4",)), out, {"model": "m", "checkpoint": "/a/m.pt", "checkpoint_sha256": "a" * 64})
    again = job(list_inputs(tree, (".mp4",)), out, {"model": "m", "checkpoint": "/b/m.pt", "checkpoint_sha256": "a" * 64})
    assert (again.ok, again.failed, again.skipped) == (0, 0, 3)


def test_an_outdir_from_before_job_json_resumes_and_gets_one(ray_cluster, tree):
    out = tree / "out"
    job(list_inputs(tree, (".mp4",)), out, None)  # as runs wrote OUTDIR before job.json existed
    assert not (out / JOB_FILE).exists()
    again = job(list_inputs(tree, (".mp4",)), out, {"model": "m"})
    assert (again.ok, again.failed, again.skipped) == (0, 0, 3)
    assert json.loads((out / JOB_FILE).read_text()) == {"job": "t", "model": "m"}


def test_no_resume_made_otherwise_redoes_and_removes_every_earlier_row(ray_cluster, tree):
    """Rows of inputs this run does not list go too: every row left in OUTDIR is of job.json's making."""
    out = tree / "out"
    job(list_inputs(tree, (".mp4",)), out, {"model": "m1"})
    again = job(list_inputs(tree / "a.mp4"), out, {"model": "m2"}, resume=False)
    assert (again.ok, again.failed, again.skipped) == (1, 0, 0)
    assert list(read_table(out)["path"]) == [str((tree / "a.mp4").resolve())]
    assert read_table(out, "failures").empty
    assert json.loads((out / JOB_FILE).read_text()) == {"job": "t", "model": "m2"}


def test_an_unreadable_job_json_is_refused_on_resume(ray_cluster, tree):
    out = tree / "out"
    job(list_inputs(tree, (".mp4",)), out, {"model": "m"})
    (out / JOB_FILE).write_text("{not json")
    with pytest.raises(JobIdentityError, match=r"job\.json: cannot read what made the rows in .*--no-resume"):
        job(list_inputs(tree, (".mp4",)), out, {"model": "m"})


# -- video-inference: another checkpoint, or random weights, never resume its rows --------------


@pytest.fixture(scope="module")
def predicted(ray_cluster, tiny_kinetics, two_checkpoints, tmp_path_factory) -> Path:
    """An OUTDIR of the first checkpoint's predictions for the held-out clips (copied by each test)."""
    from pipelines import video_inference

    out = tmp_path_factory.mktemp("predicted") / "out"
    summary = video_inference.run(tiny_kinetics / "test", out, model=VIDEO_MODEL, checkpoint=str(two_checkpoints[0]),
                                  views="1x1", topk=1, progress=False)
    assert (summary.ok, summary.failed) == (4, 0)
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv/bin/spatiotemporal"), "pipeline", "video-inference", *args, "--quiet"],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("made_with", ["another checkpoint", "random weights"])
def test_the_cli_refuses_to_resume_rows_of_another_model_in_one_line(predicted, tiny_kinetics, two_checkpoints,
                                                                     tmp_path, made_with):
    out = tmp_path / "out"
    shutil.copytree(predicted, out)
    before = _files(out)
    model = ["--checkpoint", str(two_checkpoints[1])] if made_with == "another checkpoint" else ["--random-weights"]
    run = _cli("--input", str(tiny_kinetics / "test"), "--output", str(out), "--model", VIDEO_MODEL, "--views", "1x1",
               "--topk", "1", *model)
    assert run.returncode == 2, run.stderr
    (line,) = [line for line in run.stderr.strip().splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: {out} holds rows made otherwise (")
    assert "checkpoint_sha256" in line and line.endswith("use --no-resume to redo them with this run's, or another --output")
    if made_with == "random weights":
        assert "random_weights false there, true now" in line
    assert _files(out) == before  # the earlier rows, summary and job.json untouched


def test_the_same_checkpoint_resumes_and_another_one_is_refused(predicted, tiny_kinetics, two_checkpoints, tmp_path):
    from pipelines import video_inference

    out = tmp_path / "out"
    shutil.copytree(predicted, out)
    same = dict(model=VIDEO_MODEL, views="1x1", topk=1, progress=False)
    again = video_inference.run(tiny_kinetics / "test", out, checkpoint=str(two_checkpoints[0]), **same)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 4)
    recorded = json.loads((out / JOB_FILE).read_text())
    assert recorded["checkpoint"] == str(two_checkpoints[0])
    assert recorded["checkpoint_sha256"] == hashlib.sha256(two_checkpoints[0].read_bytes()).hexdigest()
    with pytest.raises(JobIdentityError, match="checkpoint_sha256"):
        video_inference.run(tiny_kinetics / "test", out, checkpoint=str(two_checkpoints[1]), **same)
    with pytest.raises(JobIdentityError, match=r"topk 1 there, 2 now"):
        video_inference.run(tiny_kinetics / "test", out, checkpoint=str(two_checkpoints[0]), **{**same, "topk": 2})


def test_an_outdir_of_video_predictions_from_before_job_json_resumes(predicted, tiny_kinetics, two_checkpoints, tmp_path):
    from pipelines import video_inference

    out = tmp_path / "out"
    shutil.copytree(predicted, out)
    recorded = (out / JOB_FILE).read_text()
    (out / JOB_FILE).unlink()
    again = video_inference.run(tiny_kinetics / "test", out, model=VIDEO_MODEL, checkpoint=str(two_checkpoints[0]),
                                views="1x1", topk=1, progress=False)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 4)
    assert (out / JOB_FILE).read_text() == recorded


def test_published_weights_have_one_identity_however_they_are_spelt():
    from pipelines.job import model_identity

    short = model_identity("mvitv2_s", None, "k400_slowfast", False)
    assert short == model_identity("mvitv2_s", None, "mvitv2_s.k400_slowfast", False)
    assert short["weights"] == "mvitv2_s.k400_slowfast"
