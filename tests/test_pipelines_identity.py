"""Input identity and accounting: an input's id does not depend on how it was named, resuming
matches id and path, --no-resume and --retry-failed keep every input listed once, and a job
whose plan fails, or an input that cannot be named, still leaves a complete record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from pipelines.inputs import InputItem, ManifestError, list_inputs  # noqa: E402
from pipelines.job import JobAborted, OutputConflictError, check_model, run_job  # noqa: E402
from pipelines.job import read_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Ray's workers cannot import this test module: its plans travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for name in ("a.mp4", "b.mp4", "sub/c.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _echo(batch: dict) -> dict:
    """A plan's batch function: every input succeeds except files named b.*, which fail."""
    names = [os.path.basename(str(p)) for p in batch["path"]]
    return {"id": batch["id"], "path": batch["path"], "error": np.array(["boom" if n.startswith("b.") else "" for n in names])}


def echo_plan(dataset):
    return dataset.map_batches(_echo, batch_format="numpy")


def _raise_on_c(batch: dict) -> dict:
    if any(os.path.basename(str(p)) == "c.mp4" for p in batch["path"]):
        raise RuntimeError("worker bug\nsecond line")
    return {"id": batch["id"], "path": batch["path"], "error": np.array([""] * len(batch["id"]))}


def raising_plan(dataset):
    return dataset.map_batches(_raise_on_c, batch_format="numpy")


def job(items, out, **kw):
    return run_job("t", items, out, echo_plan, progress=False, **kw)


# -- ids (5/6) ---------------------------------------------------------------------------------


def test_glob_ids_are_relative_to_the_glob_prefix_whatever_the_cwd(tree, monkeypatch):
    absolute = [i.id for i in list_inputs(str(tree / "**" / "*.mp4"))]
    monkeypatch.chdir(tree.parent)
    relative = [i.id for i in list_inputs(f"{tree.name}/**/*.mp4")]
    monkeypatch.chdir(tree)
    here = [i.id for i in list_inputs("**/*.mp4")]
    assert absolute == relative == here == ["a.mp4", "b.mp4", "sub/c.mp4"]
    assert [i.id for i in list_inputs(tree, (".mp4",))] == absolute  # as the directory gives


def test_a_single_file_is_its_resolved_absolute_path(tree, monkeypatch):
    monkeypatch.chdir(tree / "sub")
    expected = InputItem(str((tree / "sub/c.mp4").resolve()), str((tree / "sub/c.mp4").resolve()))
    assert list_inputs("./c.mp4") == list_inputs("../sub/c.mp4") == list_inputs(tree / "sub/c.mp4") == [expected]


def test_manifest_spellings_of_one_file_give_one_id(tree):
    spellings = ["a.mp4", "./a.mp4", "sub/../a.mp4", str(tree / "a.mp4")]
    (tree / "list.csv").write_text("path\n" + "\n".join(spellings) + "\n")
    with pytest.raises(ManifestError, match="input id 'a.mp4' appears more than once"):
        list_inputs(tree / "list.csv")
    (tree / "one.csv").write_text(f"path\n{tree / 'a.mp4'}\n")
    assert list_inputs(tree / "one.csv") == [InputItem("a.mp4", str((tree / "a.mp4").resolve()))]


# -- ids are strings (7) -----------------------------------------------------------------------


def test_jsonl_int_ids_stay_ints_as_text_and_a_missing_id_is_the_path(tree):
    (tree / "list.jsonl").write_text('{"id": 1, "path": "a.mp4"}\n{"id": 2, "path": "b.mp4"}\n{"path": "sub/c.mp4"}\n')
    assert [i.id for i in list_inputs(tree / "list.jsonl")] == ["1", "2", "sub/c.mp4"]


def test_parquet_null_and_float_ids(tree):
    pd.DataFrame({"id": [7.0, None, np.nan], "path": ["a.mp4", "b.mp4", "sub/c.mp4"]}).to_parquet(tree / "list.parquet")
    assert [i.id for i in list_inputs(tree / "list.parquet")] == ["7", "b.mp4", "sub/c.mp4"]


def test_an_empty_csv_id_is_the_path(tree):
    (tree / "list.csv").write_text("id,path\n,a.mp4\nq,b.mp4\n")
    assert [i.id for i in list_inputs(tree / "list.csv")] == ["a.mp4", "q"]


# -- CSV row width (8) -------------------------------------------------------------------------


def test_a_csv_row_with_an_unquoted_comma_is_refused_with_its_line(tree):
    (tree / "list.csv").write_text('path\n"a,quoted.mp4"\nsub/c,b.mp4\n')
    with pytest.raises(ManifestError, match=r"list\.csv: line 3 has 2 fields but the header has 1"):
        list_inputs(tree / "list.csv")


# -- empty glob (14) ---------------------------------------------------------------------------


def test_a_glob_matching_nothing_is_an_error(tree):
    with pytest.raises(ManifestError, match=r"\*\.mp5: the glob matches no files"):
        list_inputs(str(tree / "*.mp5"))


def test_the_cli_exits_2_on_an_empty_glob(tree):
    run = subprocess.run([str(ROOT / ".venv/bin/spatiotemporal"), "pipeline", "tokenize", "--input", str(tree / "*.mp5"),
                          "--output", str(tree / "out"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: {tree / '*.mp5'}: the glob matches no files"]


# -- resume matches id and path (5) ------------------------------------------------------------


def test_resume_refuses_a_done_id_that_names_another_file(ray_cluster, tree):
    (tree / "one.csv").write_text("id,path\nclip,a.mp4\n")
    (tree / "two.csv").write_text("id,path\nclip,sub/c.mp4\n")
    job(list_inputs(tree / "one.csv"), tree / "out")
    with pytest.raises(OutputConflictError, match=r"input id 'clip' is .*/sub/c\.mp4, but .* already holds that id for .*/a\.mp4"):
        job(list_inputs(tree / "two.csv"), tree / "out")
    assert list(read_table(tree / "out")["path"]) == [str((tree / "a.mp4").resolve())]


def test_resume_skips_the_same_file_named_another_way(ray_cluster, tree, monkeypatch):
    job(list_inputs(str(tree / "*.mp4")), tree / "out")
    monkeypatch.chdir(tree)
    again = job(list_inputs("*.mp4"), tree / "out")
    assert (again.ok, again.failed, again.skipped) == (0, 0, 2)


# -- --no-resume (9) ---------------------------------------------------------------------------


def test_no_resume_replaces_the_rows_of_the_inputs_it_redoes(ray_cluster, tree):
    out = tree / "out"
    job(list_inputs(tree, (".mp4",)), out)
    again = job(list_inputs(str(tree / "*.mp4")), out, resume=False)  # a.mp4, b.mp4, not sub/c.mp4
    assert (again.ok, again.failed, again.skipped) == (1, 1, 0)
    assert sorted(read_table(out)["id"]) == ["a.mp4", "sub/c.mp4"]
    assert list(read_table(out, "failures")["id"]) == ["b.mp4"]
    assert json.loads((out / "summary.json").read_text())["extra"]["replaced_rows"] == 2


# -- --retry-failed (10) -----------------------------------------------------------------------


def test_retry_failed_keeps_failures_of_inputs_not_in_this_run(ray_cluster, tree):
    out = tree / "out"
    job(list_inputs(tree, (".mp4",)), out)
    retried = job(list_inputs(tree / "a.mp4"), out, retry_failed=True)
    assert (retried.ok, retried.failed, retried.skipped) == (1, 0, 0)  # a new id: the absolute path
    assert list(read_table(out, "failures")["id"]) == ["b.mp4"]


def test_a_rerun_whose_outdir_cannot_give_up_earlier_rows_raises_and_records_nothing(ray_cluster, tree):
    out = tree / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "part-old.parquet").write_bytes(b"not parquet")  # a shard no reader can open
    items = list_inputs(tree, (".mp4",)) + [InputItem(id="bad\udcff", path=str(tree / "bad\udcff.mp4"))]
    with pytest.raises(Exception, match="part-old.parquet") as error:
        job(items, out, resume=False)
    assert not isinstance(error.value, JobAborted)
    assert not (out / "failures").exists() and not (out / "summary.json").exists()


# -- a failing plan (11) -----------------------------------------------------------------------


def test_a_plan_that_raises_records_the_rest_as_failures_and_writes_the_summary(ray_cluster, tree):
    out = tree / "out"
    with pytest.raises(JobAborted, match=r"^t aborted: RuntimeError: worker bug$"):
        run_job("t", list_inputs(tree, (".mp4",)), out, raising_plan, rows_per_block=1, progress=False)
    results, failures = read_table(out), read_table(out, "failures")
    assert set(results["id"]) | set(failures["id"]) == {"a.mp4", "b.mp4", "sub/c.mp4"}
    assert len(results) + len(failures) == 3 and "sub/c.mp4" in set(failures["id"])
    assert set(failures["error"]) == {"job aborted: RuntimeError: worker bug"}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ok"], summary["failed"]) == (len(results), len(failures))
    assert summary["extra"]["aborted"] == "RuntimeError: worker bug"


def test_a_checkpoint_that_fails_in_the_workers_aborts_with_its_reason(ray_cluster, tree, misfitting_checkpoint):
    from pipelines import video_inference

    checkpoint = misfitting_checkpoint
    with pytest.raises(JobAborted, match=r"CheckpointError: .*misfit\.pth: spatiotemporal checkpoint does not fit"):
        video_inference.run(tree / "sub", tree / "out", model="vivit_tiny", checkpoint=str(checkpoint),
                            views="1x1", progress=False)
    (failure,) = read_table(tree / "out", "failures").to_dict("records")
    assert failure["id"] == "c.mp4" and failure["error"].startswith("job aborted: CheckpointError: ")
    assert json.loads((tree / "out" / "summary.json").read_text())["failed"] == 1


def test_an_unreadable_checkpoint_is_refused_before_anything_runs(tmp_path):
    from pipelines import video_inference

    (tmp_path / "junk.pth").write_bytes(b"junk!")
    with pytest.raises(ValueError, match=r"junk\.pth: cannot read checkpoint"):
        video_inference.run(tmp_path, tmp_path / "out", model="vivit_tiny", checkpoint=str(tmp_path / "junk.pth"),
                            progress=False)
    assert not (tmp_path / "out").exists()


def test_model_and_checkpoint_are_checked_before_ray_starts(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        check_model("nope", None, "video")
    with pytest.raises(ValueError, match="point_transformer_tiny is a points model"):
        check_model("point_transformer_tiny", None, "video")
    with pytest.raises(ValueError, match=r"missing\.pth: no such checkpoint file"):
        check_model("vivit_tiny", str(tmp_path / "missing.pth"), "video")


@pytest.mark.parametrize("command", ["video-inference", "point-inference"])
def test_the_cli_reports_a_missing_checkpoint_in_one_line(tree, command):
    model = "vivit_tiny" if command == "video-inference" else "point_transformer_tiny"
    run = subprocess.run([str(ROOT / ".venv/bin/spatiotemporal"), "pipeline", command, "--input", str(tree),
                          "--output", str(tree / "out"), "--model", model, "--checkpoint", "/nope.pth", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["error: /nope.pth: no such checkpoint file"]
    assert not (tree / "out").exists()


# -- non-UTF-8 file names (13) -----------------------------------------------------------------


def test_a_non_utf8_file_name_becomes_a_failure_row(ray_cluster, tree):
    bad = os.fsdecode(bytes(tree / "sub") + b"/caf\xe9.mp4")
    Path(bad).write_bytes(b"x")
    summary = job(list_inputs(tree / "sub", (".mp4",)), tree / "out")
    assert (summary.ok, summary.failed) == (1, 1)
    (failure,) = read_table(tree / "out", "failures").to_dict("records")
    assert failure == {"id": "caf\\xe9.mp4", "path": str((tree / "sub").resolve()) + "/caf\\xe9.mp4",
                       "error": "file name is not valid UTF-8"}
    again = job(list_inputs(tree / "sub", (".mp4",)), tree / "out")
    assert (again.ok, again.failed, again.skipped) == (0, 0, 2)
