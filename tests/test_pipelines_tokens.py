"""The tokenize job's OUTDIR layout: results/ holds only Parquet, so any Parquet reader takes the
folder whole; the token tensors live in tokens/, named by each row, and go with their rows."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("ray")

from pipelines import tokenize  # noqa: E402
from pipelines.job import read_table  # noqa: E402

SMALL = dict(frames=2, stride=1, size=16, tubelet=(1, 16, 16), progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, points_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    for name, pattern in (("a.mp4", "testsrc"), ("b.mp4", "smptebars")):
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=32x32:rate=10",
                        "-t", "0.4", "-pix_fmt", "yuv420p", str(root / name)], check=True)
    (root / "room.ply").symlink_to(points_dir / "livingroom_fragment.ply")
    return root


def test_the_results_folder_reads_whole_with_pandas(ray_cluster, inputs, tmp_path):
    tokenize.run(inputs, tmp_path, shard_rows=2, **SMALL)
    assert {p.suffix for p in (tmp_path / "results").iterdir()} == {".parquet"}
    results = pd.read_parquet(tmp_path / "results")
    assert sorted(results["id"]) == ["a.mp4", "b.mp4", "room.ply"]
    assert sorted(results["kind"]) == ["points", "video", "video"]


def test_each_row_names_its_tensor_file_under_tokens(ray_cluster, inputs, tmp_path):
    tokenize.run(inputs, tmp_path, shard_rows=2, **SMALL)
    results = read_table(tmp_path)
    files = sorted(set(results["tensor_file"]))
    assert all(name.startswith("tokens/part-") and name.endswith(".safetensors") for name in files)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "tokens").iterdir()) == files
    shards = tokenize.TokenShards(tmp_path)
    assert [shards[i]["id"] for i in range(len(shards))] == ["a.mp4", "b.mp4", "room.ply"]
    assert shards[0]["tokens"].shape == (2, 16 * 16 * 3)


def test_redoing_every_input_leaves_no_tensor_file_without_rows(ray_cluster, inputs, tmp_path):
    tokenize.run(inputs, tmp_path, shard_rows=2, **SMALL)
    tokenize.run(inputs, tmp_path, shard_rows=2, resume=False, **SMALL)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "tokens").iterdir()) == sorted(
        set(read_table(tmp_path)["tensor_file"])
    )
    assert len(tokenize.TokenShards(tmp_path)) == 3
