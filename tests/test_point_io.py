"""Reading point clouds: PLY, npy/pth dumps, ScanNet raw scenes, the preprocessed layout, and the
errors every bad input must raise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch

from spatiotemporal.io.errors import InputError, PointCloudError
from spatiotemporal.io.points import (
    read_npy,
    read_ply,
    read_points,
    read_preprocessed,
    read_pth,
    read_scannet_scene,
    write_ply,
    write_preprocessed,
)


def cloud(n: int = 50, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n, 3))
    return {
        "coord": rng.uniform(-2, 2, (n, 3)).astype(np.float32),
        "color": rng.integers(0, 256, (n, 3)).astype(np.float32),
        "normal": (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32),
        "nyu40": rng.integers(0, 41, n),
    }


def write_vertices(path: Path, fields: list[tuple[str, str]], rows: np.ndarray | None = None, n: int = 4) -> Path:
    vertex = np.zeros(n, dtype=fields) if rows is None else rows
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(path))
    return path


def test_reads_the_real_livingroom_fragment(points_dir):
    path = points_dir / "livingroom_fragment.ply"
    out = read_ply(path)
    reference = plyfile.PlyData.read(str(path))["vertex"]
    assert out["coord"].shape == (112_698, 3) and out["coord"].dtype == np.float32
    assert out["color"].dtype == np.float32 and out["color"].max() <= 255
    np.testing.assert_array_equal(out["coord"][:, 0], np.asarray(reference["x"], np.float32))
    np.testing.assert_array_equal(out["color"][:, 2], np.asarray(reference["blue"], np.float32))
    assert "normal" not in out and "label" not in out and "nyu40" not in out


def test_binary_and_ascii_ply_read_the_same(tmp_path):
    data = cloud()
    write_ply(tmp_path / "b.ply", data)
    write_ply(tmp_path / "a.ply", data, text=True)
    binary, ascii_ = read_ply(tmp_path / "b.ply"), read_ply(tmp_path / "a.ply")
    assert b"format ascii" in (tmp_path / "a.ply").read_bytes()[:40]
    for key in ("coord", "color", "normal"):
        np.testing.assert_allclose(binary[key], data[key], atol=1e-6)
        np.testing.assert_allclose(ascii_[key], data[key], atol=1e-6)


def test_reads_scannet_ushort_label_property(tmp_path):
    data = cloud()
    del data["normal"]  # ScanNet's layout: xyz, rgba, label
    write_ply(tmp_path / "labels.ply", data, alpha=True, label_key="nyu40")
    header = (tmp_path / "labels.ply").read_bytes()[:400]
    assert b"property uchar alpha\nproperty ushort label\n" in header
    out = read_ply(tmp_path / "labels.ply")
    np.testing.assert_array_equal(out["label"], data["nyu40"])


def test_a_ply_label_property_is_read_as_label_whatever_its_ids_mean(tmp_path):
    # A PLY does not say which label set its `label` ids come from (infer writes class indices
    # for heads that are not ScanNet's), so the reader names the property, not a label set.
    data = {**cloud(), "label": np.arange(50) % 25}
    write_ply(tmp_path / "classes.ply", data, label_key="label")
    out = read_ply(tmp_path / "classes.ply")
    np.testing.assert_array_equal(out["label"], np.arange(50) % 25)
    assert out["label"].dtype == np.int64 and "nyu40" not in out


def test_unreadable_ply_names_the_file_and_the_reason(tmp_path):
    bad = tmp_path / "garbage.ply"
    bad.write_bytes(b"this is not a ply file\n" * 10)
    with pytest.raises(PointCloudError) as info:
        read_ply(bad)
    assert info.value.path == str(bad) and "unreadable PLY" in info.value.reason
    assert isinstance(info.value, InputError)


def test_truncated_ply_is_an_error_not_a_short_cloud(tmp_path):
    path = tmp_path / "cut.ply"
    write_ply(path, cloud(1000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])
    with pytest.raises(PointCloudError, match="early end-of-file"):
        read_ply(path)


def test_missing_vertex_properties(tmp_path):
    path = write_vertices(tmp_path / "xy.ply", [("x", "f4"), ("y", "f4")])
    with pytest.raises(PointCloudError, match=r"missing vertex properties \['z'\]"):
        read_ply(path)
    no_label = write_vertices(tmp_path / "nolabel.ply", [("x", "f4"), ("y", "f4"), ("z", "f4")])
    with pytest.raises(PointCloudError, match=r"\['label'\]"):
        read_ply(no_label, require=("label",))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_coordinates(tmp_path, value):
    data = cloud()
    data["coord"][7, 1] = value
    write_ply(tmp_path / "bad.ply", data)
    with pytest.raises(PointCloudError, match="NaN or inf coordinates \\(first at index 7\\)"):
        read_ply(tmp_path / "bad.ply")


def test_empty_cloud(tmp_path):
    path = write_vertices(tmp_path / "empty.ply", [("x", "f4"), ("y", "f4"), ("z", "f4")], n=0)
    with pytest.raises(PointCloudError, match="empty point cloud"):
        read_ply(path)
    np.save(tmp_path / "empty.npy", np.zeros((0, 6), np.float32))
    with pytest.raises(PointCloudError, match="empty point cloud"):
        read_npy(tmp_path / "empty.npy")


def make_scene(root: Path, name: str = "scene0001_00", n: int = 6, labels_n: int | None = None) -> Path:
    """A hand-made raw ScanNet scene: 6 vertices in 3 segments, 2 annotated objects."""
    scene = root / name
    scene.mkdir(parents=True)
    data = cloud(n)
    data["nyu40"] = np.array([1, 1, 5, 5, 7, 7][:n])
    write_ply(scene / f"{name}_vh_clean_2.ply", data, alpha=True)
    labels = cloud(labels_n or n)
    labels["nyu40"] = np.resize(data["nyu40"], labels_n or n)
    write_ply(scene / f"{name}_vh_clean_2.labels.ply", labels, alpha=True, label_key="nyu40")
    segs = {"sceneId": name, "segIndices": [10, 10, 2000, 2000, 31, 31][:n]}
    (scene / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps(segs))
    groups = [
        {"id": 0, "objectId": 0, "segments": [2000], "label": "office chair"},
        {"id": 1, "objectId": 1, "segments": [31], "label": "coffee table"},
    ]
    (scene / f"{name}.aggregation.json").write_text(json.dumps({"sceneId": f"scannet.{name}", "segGroups": groups}))
    return scene


def test_scannet_scene_labels_and_instances(tmp_path):
    scene = make_scene(tmp_path)
    out = read_scannet_scene(scene)
    np.testing.assert_array_equal(out["nyu40"], [1, 1, 5, 5, 7, 7])
    np.testing.assert_array_equal(out["instance"], [-1, -1, 0, 0, 1, 1])
    assert out["instance_category"] == ["office chair", "coffee table"]
    assert read_points(scene)["coord"].shape == (6, 3)


def test_label_count_must_match_the_vertex_count(tmp_path):
    scene = make_scene(tmp_path, labels_n=5)
    with pytest.raises(PointCloudError, match="label count 5 does not match the mesh's 6 vertices") as info:
        read_scannet_scene(scene)
    assert info.value.path.endswith("scene0001_00_vh_clean_2.labels.ply")


def test_segment_count_must_match_the_vertex_count(tmp_path):
    scene = make_scene(tmp_path)
    segs = scene / "scene0001_00_vh_clean_2.0.010000.segs.json"
    segs.write_text(json.dumps({"segIndices": [1, 2, 3]}))
    with pytest.raises(PointCloudError, match="3 segment indices but the mesh has 6 vertices"):
        read_scannet_scene(scene)


def test_npy_columns_are_xyz_rgb_label(tmp_path):
    array = np.column_stack([cloud(20)["coord"], np.full((20, 3), 128.0), np.arange(20) % 20]).astype(np.float32)
    np.save(tmp_path / "scene.npy", array)
    out = read_points(tmp_path / "scene.npy")
    np.testing.assert_array_equal(out["coord"], array[:, :3])
    np.testing.assert_array_equal(out["segment"], np.arange(20))
    assert out["segment"].dtype == np.int64


def test_pth_pointcept_dict(tmp_path):
    data = cloud(30)
    torch.save({"coord": data["coord"], "color": data["color"].astype(np.uint8), "semantic_gt20": np.arange(30) % 20,
                "instance_gt": np.arange(30)}, tmp_path / "scene.pth")
    out = read_pth(tmp_path / "scene.pth")
    np.testing.assert_array_equal(out["coord"], data["coord"])
    np.testing.assert_array_equal(out["segment"], np.arange(30) % 20)
    np.testing.assert_array_equal(out["instance"], np.arange(30))


def test_pth_tuple_with_colors_in_minus_one_one_and_minus_100_ignore(tmp_path):
    coord = cloud(4)["coord"]
    colors = np.array([[-1, -1, -1], [1, 1, 1], [0, 0, 0], [-1, 0, 1]], np.float32)
    torch.save((torch.from_numpy(coord), torch.from_numpy(colors), torch.tensor([3, -100, 0, 19])), tmp_path / "t.pth")
    out = read_points(tmp_path / "t.pth")
    np.testing.assert_array_equal(out["color"][:, 0], [0, 255, 127.5, 0])
    np.testing.assert_array_equal(out["segment"], [3, -1, 0, 19])


def test_corrupt_pth_and_unknown_formats(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"\x00\x01 not a torch file")
    with pytest.raises(PointCloudError, match="unreadable .pth scene"):
        read_points(tmp_path / "bad.pth")
    (tmp_path / "cloud.xyz").write_text("1 2 3\n")
    with pytest.raises(PointCloudError, match="unsupported point cloud format '.xyz'"):
        read_points(tmp_path / "cloud.xyz")
    with pytest.raises(PointCloudError, match="file does not exist"):
        read_points(tmp_path / "missing.ply")


def test_preprocessed_layout_round_trip(tmp_path):
    data = cloud(40)
    data["segment"] = np.arange(40) % 21 - 1
    data["instance"] = np.arange(40) - 1
    write_preprocessed(tmp_path / "scene0000_00", data)
    assert np.load(tmp_path / "scene0000_00" / "color.npy").dtype == np.uint8
    assert np.load(tmp_path / "scene0000_00" / "segment20.npy").dtype == np.int16
    out = read_preprocessed(tmp_path / "scene0000_00")
    np.testing.assert_array_equal(out["coord"], data["coord"])
    np.testing.assert_array_equal(out["color"], data["color"])
    np.testing.assert_array_equal(out["segment"], data["segment"])
    np.testing.assert_array_equal(out["instance"], data["instance"])
    assert out["segment"].dtype == np.int64 and out["color"].dtype == np.float32


def test_preprocessed_arrays_must_agree_in_length(tmp_path):
    data = cloud(40)
    write_preprocessed(tmp_path / "s", data)
    np.save(tmp_path / "s" / "segment20.npy", np.zeros(39, np.int16))
    with pytest.raises(PointCloudError, match="'segment' has 39 values but the cloud has 40 points"):
        read_points(tmp_path / "s")


def write_mesh(path: Path, faces: list[list[int]]) -> Path:
    """A unit square in the z = 0 plane, as counter-clockwise triangles (normal +z)."""
    vertex = np.array([(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    face = np.array([(f,) for f in faces], dtype=[("vertex_indices", "i4", (3,))])
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"), plyfile.PlyElement.describe(face, "face")]).write(str(path))
    return path


def test_mesh_faces_give_the_vertex_normals(tmp_path):
    from spatiotemporal.io.points import estimate_normals

    mesh = read_ply(write_mesh(tmp_path / "square.ply", [[0, 1, 2], [0, 2, 3]]))
    np.testing.assert_array_equal(mesh["faces"], [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_allclose(estimate_normals(mesh), np.tile([0, 0, 1.0], (4, 1)), atol=1e-6)


def test_face_indices_beyond_the_vertices_are_an_error(tmp_path):
    with pytest.raises(PointCloudError, match="face indices out of range for 4 vertices"):
        read_ply(write_mesh(tmp_path / "bad.ply", [[0, 1, 2], [0, 2, 7]]))
