"""`spatiotemporal prepare scannet RAW OUT` on Ray: layout, failures recorded, resumable."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from spatiotemporal.cli import main
from spatiotemporal.data.scannet import nyu40_to_segment20
from spatiotemporal.data.synthetic_scannet import SceneSpec, write_dataset
from spatiotemporal.io.points import read_preprocessed, read_scannet_scene


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # A private cluster: never attach to one another job on this machine left running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_cluster):
    """Three synthetic scenes, one broken scene (a corrupt mesh), one scene in no split list."""
    raw = tmp_path_factory.mktemp("raw")
    splits = write_dataset(raw, 3, seed=1, spec=SceneSpec(spacing=0.08))
    broken = raw / "scene0100_00"
    broken.mkdir()
    (broken / "scene0100_00_vh_clean_2.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\n")
    with (raw / "scannetv2_train.txt").open("a") as handle:
        handle.write("scene0100_00\n")
    (raw / "scene0200_00").mkdir()
    out = tmp_path_factory.mktemp("out")
    code = main(["prepare", "scannet", str(raw), str(out)])
    return raw, out, splits, code


def read_failures(out) -> dict[str, str]:
    with (out / "failures.csv").open() as handle:
        return {row["scene"]: row["reason"] for row in csv.DictReader(handle)}


def test_writes_the_pointcept_layout_per_split(prepared):
    raw, out, splits, _ = prepared
    for split, names in splits.items():
        for name in names:
            folder = out / split / name
            assert sorted(p.name for p in folder.iterdir()) == [
                "color.npy", "coord.npy", "instance.npy", "normal.npy", "segment20.npy",
            ]
            scene = read_preprocessed(folder)
            source = read_scannet_scene(raw / name)
            np.testing.assert_array_equal(scene["coord"], source["coord"])
            np.testing.assert_array_equal(scene["segment"], nyu40_to_segment20(source["nyu40"]))
            np.testing.assert_array_equal(scene["instance"], source["instance"])
            np.testing.assert_allclose(np.linalg.norm(scene["normal"], axis=1), 1.0, atol=1e-4)


def test_bad_scenes_are_recorded_with_a_reason_and_the_job_goes_on(prepared):
    raw, out, splits, code = prepared
    failures = read_failures(out)
    assert code == 1
    assert set(failures) == {"scene0100_00", "scene0200_00"}
    assert "unreadable PLY" in failures["scene0100_00"]
    with (out / "failures.csv").open() as handle:  # the file that failed, in the path column
        paths = {row["scene"]: row["path"] for row in csv.DictReader(handle)}
    assert paths["scene0100_00"] == str(raw / "scene0100_00" / "scene0100_00_vh_clean_2.ply")
    assert "not listed" in failures["scene0200_00"]
    assert not (out / "train" / "scene0100_00").exists()
    assert not list(out.rglob("*.partial"))


def test_a_rerun_skips_finished_scenes_and_retries_failed_ones(prepared, capsys):
    raw, out, splits, _ = prepared
    finished = out / "train" / splits["train"][0] / "coord.npy"
    before = finished.stat().st_mtime_ns
    (raw / "scene0200_00").rmdir()  # the unlisted scene is gone now; the broken one still fails
    code = main(["prepare", "scannet", str(raw), str(out)])
    assert code == 1
    assert finished.stat().st_mtime_ns == before
    assert "prepared 0 scenes, skipped 3 already done, 1 failed" in capsys.readouterr().out
    assert set(read_failures(out)) == {"scene0100_00"}


def copy_scene(source: Path, target: Path, keep_labels: bool = True) -> None:
    """A synthetic scene under another scene id; without labels, as the official test scenes."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        if keep_labels or file.name.endswith("_vh_clean_2.ply"):
            shutil.copy(file, target / file.name.replace(source.name, target.name))


@pytest.fixture(scope="module")
def official_layout(tmp_path_factory, ray_cluster):
    """RAW/scans/ with a train scene, RAW/scans_test/ with an unlabelled test scene, and a val
    scene that the split list names but the download lacks."""
    generated = tmp_path_factory.mktemp("generated")
    write_dataset(generated, 2, seed=1, spec=SceneSpec(spacing=0.15))
    raw = tmp_path_factory.mktemp("official")
    copy_scene(generated / "scene0000_00", raw / "scans" / "scene0000_00")
    copy_scene(generated / "scene0001_00", raw / "scans_test" / "scene0707_00", keep_labels=False)
    (raw / "scannetv2_train.txt").write_text("scene0000_00\n")
    (raw / "scannetv2_val.txt").write_text("scene0500_00\n")
    (raw / "scannetv2_test.txt").write_text("scene0707_00\n")
    out = tmp_path_factory.mktemp("official_out")
    return raw, out, main(["prepare", "scannet", str(raw), str(out)])


def test_test_scenes_in_scans_test_are_prepared_without_labels(official_layout):
    _, out, _ = official_layout
    assert sorted(p.name for p in (out / "test" / "scene0707_00").iterdir()) == [
        "color.npy", "coord.npy", "normal.npy",
    ]
    assert (out / "train" / "scene0000_00" / "segment20.npy").is_file()


def test_a_listed_scene_found_nowhere_is_a_failure_with_its_name(official_layout):
    raw, out, code = official_layout
    assert code == 1
    with (out / "failures.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["scene"], row["path"]) for row in rows] == [("scene0500_00", str(raw / "scans" / "scene0500_00"))]
    assert rows[0]["reason"] == (
        f"listed in scannetv2_val.txt but not found in {raw / 'scans'}, {raw / 'scans_test'}"
    )


def test_the_summary_counts_listed_scenes_that_are_missing(official_layout, capsys):
    raw, out, _ = official_layout
    assert main(["prepare", "scannet", str(raw), str(out)]) == 1
    assert "prepared 0 scenes, skipped 2 already done, 0 failed, 1 listed but missing (scene0500_00)" in (
        capsys.readouterr().out
    )


def test_scenes_are_found_in_scans_and_split_by_local_lists_before_official_ones(tmp_path):
    from spatiotemporal.commands.prepare_scannet import find_scenes, scene_splits

    (tmp_path / "scans" / "scene0011_00").mkdir(parents=True)
    (tmp_path / "scans" / "scene0000_00").mkdir()
    assert [p.name for p in find_scenes(tmp_path)] == ["scene0000_00", "scene0011_00"]
    official = scene_splits(tmp_path, None)
    assert official["scene0000_00"] == "train" and official["scene0568_00"] == "val" and official["scene0707_00"] == "test"
    (tmp_path / "scannetv2_val.txt").write_text("scene0000_00\n")
    assert scene_splits(tmp_path, None) == {"scene0000_00": "val"}


def test_scenes_are_found_in_both_official_folders(tmp_path):
    from spatiotemporal.commands.prepare_scannet import find_scenes

    (tmp_path / "scans" / "scene0011_00").mkdir(parents=True)
    (tmp_path / "scans_test" / "scene0707_00").mkdir(parents=True)
    assert [p.relative_to(tmp_path).as_posix() for p in find_scenes(tmp_path)] == [
        "scans/scene0011_00", "scans_test/scene0707_00",
    ]
