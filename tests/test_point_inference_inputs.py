"""What point-inference runs over: one input per scene folder (at any depth, or the root itself),
point files beside them, and exactly the file types the point reader accepts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.point_inference import list_scans
from spatiotemporal.io.errors import PointCloudError
from spatiotemporal.io.points import POINT_FILE_EXTENSIONS, read_ply, read_points, write_ply, write_preprocessed


@pytest.fixture(scope="module")
def cloud(points_dir: Path) -> dict:
    """Every 200th point of the real living-room scan (xyz and rgb)."""
    scan = read_ply(points_dir / "livingroom_fragment.ply")
    return {"coord": scan["coord"][::200], "color": scan["color"][::200]}


@pytest.fixture()
def prepared_root(tmp_path: Path, cloud: dict) -> Path:
    """What `prepare scannet` writes: OUT/{split}/{scene}/coord.npy, color.npy, ..."""
    for scene in ("train/scene0000_00", "train/scene0001_00", "val/scene0002_00"):
        write_preprocessed(tmp_path / "ss" / scene, {**cloud, "segment": np.zeros(len(cloud["coord"]), np.int64)})
    return tmp_path / "ss"


def test_a_prepared_root_lists_one_input_per_scene_folder_in_every_split(prepared_root):
    items = list_scans(prepared_root)
    assert [item.id for item in items] == ["train/scene0000_00", "train/scene0001_00", "val/scene0002_00"]
    assert [item.path for item in items] == [os.path.realpath(prepared_root / item.id) for item in items]


def test_a_scene_folder_given_as_the_input_is_one_scan(prepared_root):
    scene = prepared_root / "train" / "scene0001_00"
    assert [(item.id, item.path) for item in list_scans(scene)] == [(str(scene.resolve()), str(scene.resolve()))]


def test_point_files_beside_scene_folders_are_inputs_too(tmp_path, cloud):
    write_preprocessed(tmp_path / "scene0000_00", cloud)
    write_ply(tmp_path / "room.ply", cloud)
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "desk.npz", coord=cloud["coord"], color=cloud["color"])
    assert [item.id for item in list_scans(tmp_path)] == ["room.ply", "scene0000_00", "sub/desk.npz"]


def test_scannet_ground_truth_beside_a_loose_mesh_is_not_an_input(tmp_path, cloud):
    write_ply(tmp_path / "room.ply", cloud)
    write_ply(tmp_path / "room.labels.ply", {**cloud, "label": np.ones(len(cloud["coord"]), np.int64)},
              label_key="label")
    assert [item.id for item in list_scans(tmp_path)] == ["room.ply"]


def write_as(path: Path, cloud: dict) -> None:
    """`cloud` in the file type `path`'s suffix names."""
    columns = np.concatenate([cloud["coord"], cloud["color"]], axis=1)
    if path.suffix == ".ply":
        write_ply(path, cloud)
    elif path.suffix == ".npy":
        np.save(path, columns)
    elif path.suffix == ".npz":
        np.savez(path, coord=cloud["coord"], color=cloud["color"])
    else:
        torch.save({"coord": cloud["coord"], "color": cloud["color"]}, path)


@pytest.mark.parametrize("suffix", POINT_FILE_EXTENSIONS)
def test_every_listed_point_file_type_is_listed_and_read(tmp_path, cloud, suffix):
    write_as(tmp_path / f"scan{suffix}", cloud)
    (item,) = list_scans(tmp_path)
    read = read_points(item.path)
    np.testing.assert_allclose(read["coord"], cloud["coord"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(read["color"], cloud["color"])


def test_npz_labels_use_the_libraries_ignore_id(tmp_path, cloud):
    segment = np.arange(len(cloud["coord"])) % 21 - 1  # -1..19
    segment[:3] = -100  # SparseConvNet-era ignore
    np.savez(tmp_path / "scan.npz", coord=cloud["coord"], color=cloud["color"], segment20=segment)
    read = read_points(tmp_path / "scan.npz")
    np.testing.assert_array_equal(read["segment"], np.where(segment < 0, -1, segment))


def test_an_npz_of_one_unnamed_array_reads_as_xyz_rgb_columns(tmp_path, cloud):
    np.savez(tmp_path / "scan.npz", np.concatenate([cloud["coord"], cloud["color"]], axis=1))
    read = read_points(tmp_path / "scan.npz")
    np.testing.assert_allclose(read["coord"], cloud["coord"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(read["color"], cloud["color"])


def test_an_npz_without_coordinates_names_the_arrays_it_found(tmp_path, cloud):
    np.savez(tmp_path / "scan.npz", xyz=cloud["coord"], rgb=cloud["color"])
    with pytest.raises(PointCloudError, match=r"needs a 'coord' array .* found \['rgb', 'xyz'\]"):
        read_points(tmp_path / "scan.npz")


def test_a_truncated_npz_is_a_point_cloud_error(tmp_path, cloud):
    np.savez(tmp_path / "whole.npz", coord=cloud["coord"], color=cloud["color"])
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:300])
    with pytest.raises(PointCloudError, match="unreadable .npz"):
        read_points(tmp_path / "cut.npz")


def test_a_half_written_scene_left_by_an_interrupted_prepare_is_not_a_scan(prepared_root, cloud):
    # `prepare scannet` writes each scene into a hidden `.{scene}.partial` folder and renames it
    # when done; a killed run leaves that folder behind with a coord.npy in it.
    write_preprocessed(prepared_root / "train" / ".scene0003_00.partial", cloud)
    assert [item.id for item in list_scans(prepared_root)] == [
        "train/scene0000_00", "train/scene0001_00", "val/scene0002_00"
    ]
