"""Point-inference submission files: one per scan, never shared by two scans, named as the ScanNet
benchmark expects for ScanNet scenes, and the same in every run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.point_inference import submission_names

MODEL = "point_transformer_tiny"


def test_scans_sharing_a_file_name_are_named_by_their_whole_id():
    names = submission_names(["a/room.ply", "b/room.ply", "c/room.npy"])
    assert names == {"a/room.ply": "a__room", "b/room.ply": "b__room", "c/room.npy": "c__room"}


def test_scannet_scenes_keep_the_benchmark_name_however_they_are_given():
    ids = ["train/scene0000_00", "scene0001_00", "scans/scene0002_00/scene0002_00_vh_clean_2.ply",
           "/data/scannet/scans_test/scene0707_00"]
    assert list(submission_names(ids).values()) == ["scene0000_00", "scene0001_00", "scene0002_00", "scene0707_00"]


def test_a_scannet_scene_listed_twice_is_named_by_its_whole_id():
    names = submission_names(["train/scene0000_00", "copy/scene0000_00", "val/scene0001_00"])
    assert names == {"train/scene0000_00": "train__scene0000_00", "copy/scene0000_00": "copy__scene0000_00",
                     "val/scene0001_00": "scene0001_00"}


def test_names_that_still_clash_get_a_hash_of_the_id():
    # Fixed values: a resumed run, or a later version, must name these scans the same way.
    assert submission_names(["room.ply", "room.npy", "Room.pth"]) == {
        "room.ply": "room-b388c36c", "room.npy": "room-d9a53ca1", "Room.pth": "Room-44050165"}


def test_a_name_does_not_depend_on_the_other_inputs():
    # Runs over different inputs into one OUTDIR must not reuse a name for another scan.
    alone = submission_names(["a/room.ply"])
    assert alone == {"a/room.ply": "a__room"}
    assert submission_names(["a/room.ply", "b/desk.ply"])["a/room.ply"] == alone["a/room.ply"]


def test_an_absolute_id_makes_a_plain_file_name():
    assert submission_names(["/work/scans/my room (2).ply"]) == {"/work/scans/my room (2).ply": "work__scans__my_room_2_"}


@pytest.fixture(scope="module")
def living_room(points_dir: Path) -> dict:
    from spatiotemporal.io.points import read_ply

    scan = read_ply(points_dir / "livingroom_fragment.ply")
    return {"coord": scan["coord"], "color": scan["color"]}


def subsample(cloud: dict, step: int) -> dict:
    return {key: value[::step] for key, value in cloud.items()}


def submitted(out: Path, name: str) -> np.ndarray:
    return np.loadtxt(out / "submission" / f"{name}.txt", dtype=np.int64)


def test_scans_sharing_a_file_name_each_get_their_own_submission(ray_cluster, living_room, tmp_path):
    from pipelines import point_inference
    from pipelines.job import read_table
    from spatiotemporal.io.points import write_ply

    scans = tmp_path / "scans"
    for folder, step in (("a", 50), ("b", 80)):
        (scans / folder).mkdir(parents=True)
        write_ply(scans / folder / "room.ply", subsample(living_room, step))
    (scans / "c").mkdir()
    np.savez(scans / "c" / "room.npz", **subsample(living_room, 110))
    out = tmp_path / "out"
    summary = point_inference.run(scans, out, model=MODEL, random_weights=True, progress=False)
    assert (summary.ok, summary.failed) == (3, 0)
    assert sorted(p.name for p in (out / "submission").iterdir()) == ["a__room.txt", "b__room.txt", "c__room.txt"]
    rows = {row["id"]: row for row in read_table(out).to_dict("records")}
    for scan_id, name, step in (("a/room.ply", "a__room", 50), ("b/room.ply", "b__room", 80),
                                ("c/room.npz", "c__room", 110)):
        assert len(submitted(out, name)) == len(living_room["coord"][::step])
        np.testing.assert_array_equal(submitted(out, name), rows[scan_id]["labels"])


def test_a_prepared_root_gets_one_submission_per_scene_and_per_loose_scan(ray_cluster, living_room, tmp_path):
    from pipelines import point_inference
    from spatiotemporal.io.points import write_ply, write_preprocessed

    root = tmp_path / "ss"
    write_preprocessed(root / "train" / "scene0000_00", subsample(living_room, 70))
    write_preprocessed(root / "val" / "scene0001_00", subsample(living_room, 90))
    write_ply(root / "room.ply", subsample(living_room, 130))
    out = tmp_path / "out"
    summary = point_inference.run(root, out, model=MODEL, random_weights=True, progress=False)
    assert (summary.total, summary.ok, summary.failed) == (3, 3, 0)
    lines = {p.stem: len(np.loadtxt(p, dtype=np.int64)) for p in (out / "submission").iterdir()}
    n = len(living_room["coord"])
    assert lines == {"scene0000_00": len(range(0, n, 70)), "scene0001_00": len(range(0, n, 90)),
                     "room": len(range(0, n, 130))}
