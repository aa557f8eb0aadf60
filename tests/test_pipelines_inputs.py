"""What a job runs over: directories, globs and manifests, each input with one stable id."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import load_config
from pipelines.inputs import VIDEO_EXTENSIONS, InputItem, ManifestError, list_inputs


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for name in ("b.mp4", "a.MKV", "sub/c.mov", "notes.txt", "sub/deeper/d.webm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_a_directory_lists_media_recursively_with_relative_ids(tree):
    items = list_inputs(tree, VIDEO_EXTENSIONS)
    assert [i.id for i in items] == ["a.MKV", "b.mp4", "sub/c.mov", "sub/deeper/d.webm"]
    assert items[1] == InputItem("b.mp4", str((tree / "b.mp4").resolve()))


def test_a_glob_lists_matching_files_by_path(tree):
    items = list_inputs(str(tree / "**" / "*.mov"))
    assert [Path(i.path).name for i in items] == ["c.mov"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_manifest_gives_ids_and_paths_relative_to_itself(tree, suffix):
    frame = pd.DataFrame({"id": ["second", "first"], "path": ["sub/c.mov", str(tree / "b.mp4")]})
    manifest = tree / f"list{suffix}"
    if suffix == ".csv":
        frame.to_csv(manifest, index=False)
    elif suffix == ".jsonl":
        manifest.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_parquet(manifest)
    items = list_inputs(manifest)
    assert items == [
        InputItem("first", str(tree / "b.mp4")),
        InputItem("second", str((tree / "sub/c.mov").resolve())),
    ]


def test_a_manifest_without_ids_uses_the_paths(tree):
    (tree / "list.csv").write_text("path\nb.mp4\n")
    assert list_inputs(tree / "list.csv") == [InputItem("b.mp4", str((tree / "b.mp4").resolve()))]


def test_duplicate_ids_are_refused(tree):
    (tree / "list.csv").write_text("id,path\nx,b.mp4\nx,sub/c.mov\n")
    with pytest.raises(ManifestError, match="'x' appears more than once"):
        list_inputs(tree / "list.csv")


def test_a_manifest_without_a_path_column_is_refused(tree):
    (tree / "list.csv").write_text("file\nb.mp4\n")
    with pytest.raises(ManifestError, match="needs a 'path' column"):
        list_inputs(tree / "list.csv")


def test_a_missing_input_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="not a directory, glob, manifest or file"):
        list_inputs(tmp_path / "nope")


def test_config_overrides_are_parsed_as_yaml(tmp_path):
    (tmp_path / "job.yaml").write_text("job: video_inference\nmodel: vivit_tiny\nworkers: 1\n")
    job, kwargs = load_config(tmp_path / "job.yaml", ["workers=2", "views=4x3", "embed=true", "input=/x"])
    assert job == "video_inference"
    assert kwargs == {"model": "vivit_tiny", "workers": 2, "views": "4x3", "embed": True, "input": "/x"}


def test_a_config_without_a_known_job_is_refused(tmp_path):
    (tmp_path / "job.yaml").write_text("job: transcode\n")
    with pytest.raises(ValueError, match="unknown job 'transcode'"):
        load_config(tmp_path / "job.yaml")
