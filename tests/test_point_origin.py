"""Georeferenced scans: coordinates far from zero are read in float64 and held as float32 relative
to a float64 `origin`, which every writer adds back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch

from spatiotemporal.infer import PointSegmenter, write_labeled_ply
from spatiotemporal.io.points import (
    ORIGIN_STEP,
    estimate_normals,
    read_ply,
    read_preprocessed,
    write_ply,
    write_preprocessed,
)

# A UTM position (easting, northing, elevation), as survey and lidar scans are delivered.
UTM = np.array([500_000.0, 4_500_000.0, 100.0])


def write_double_ply(path: Path, cloud: dict) -> Path:
    """xyz as double, as georeferenced exporters write them, with colours and normals."""
    fields = [(a, "f8") for a in "xyz"] + [(c, "u1") for c in ("red", "green", "blue")]
    fields += [(a, "f4") for a in ("nx", "ny", "nz")]
    vertex = np.empty(len(cloud["coord"]), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = np.asarray(cloud["coord"], np.float64).T
    vertex["red"], vertex["green"], vertex["blue"] = np.asarray(cloud["color"], np.uint8).T
    vertex["nx"], vertex["ny"], vertex["nz"] = cloud["normal"].T
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(path))
    return path


@pytest.fixture(scope="module")
def room(points_dir) -> dict:
    """20,000 points of the real living-room scan, with normals estimated once so that both copies
    below carry the same ones: the model then sees exactly the same features, and coordinates are
    the only thing that differs."""
    scan = read_ply(points_dir / "livingroom_fragment.ply")
    keep = np.random.default_rng(0).choice(len(scan["coord"]), 20_000, replace=False)
    cloud = {"coord": scan["coord"][keep].astype(np.float64), "color": scan["color"][keep]}
    cloud["normal"] = estimate_normals({"coord": scan["coord"][keep]})
    return cloud


@pytest.fixture(scope="module")
def files(room, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("georeferenced")
    return {
        "local": write_double_ply(folder / "local.ply", room),
        "utm": write_double_ply(folder / "utm.ply", {**room, "coord": room["coord"] + UTM}),
    }


@pytest.fixture(scope="module")
def predictions(files) -> dict:
    torch.manual_seed(0)
    segmenter = PointSegmenter("point_transformer_tiny", device="cpu", max_fragments=1, random_weights=True)
    return {name: segmenter.predict(path) for name, path in files.items()}


def test_a_georeferenced_scan_reads_with_every_point_distinct(files):
    file_xyz = np.stack([plyfile.PlyData.read(str(files["utm"]))["vertex"][a] for a in "xyz"], axis=1)
    out = read_ply(files["utm"])
    assert len(np.unique(out["coord"], axis=0)) == 20_000  # float32 as it stands: 13,141
    assert out["coord"].dtype == np.float32 and out["origin"].dtype == np.float64
    # The coordinates are the float64 differences from the origin, rounded once to float32.
    np.testing.assert_array_equal(out["coord"], (file_xyz - out["origin"]).astype(np.float32))


def test_the_origin_is_whole_steps_near_the_middle_of_the_scan(files):
    out = read_ply(files["utm"])
    assert np.array_equal(out["origin"] % ORIGIN_STEP, np.zeros(3))
    centre = (out["coord"].min(0) + out["coord"].max(0)) / 2
    assert (np.abs(centre) <= ORIGIN_STEP / 2).all()


def test_a_scan_near_zero_keeps_its_coordinates_bit_for_bit(files, room):
    out = read_ply(files["local"])
    np.testing.assert_array_equal(out["origin"], np.zeros(3))
    np.testing.assert_array_equal(out["coord"], room["coord"].astype(np.float32))


def test_predictions_on_a_georeferenced_copy_match_the_original(predictions):
    local, utm = predictions["local"], predictions["utm"]
    # The copies differ only in how float32 rounds them (by up to 2 um after centring), which
    # can move a point that lies on a 2 cm voxel boundary into the next voxel; measured: no
    # point of 20,000 changes class (held as float32 without an origin: 9.5% did).
    assert (local.segment == utm.segment).mean() >= 0.999


def test_the_labeled_ply_of_a_georeferenced_scan_carries_its_own_coordinates(predictions, files, tmp_path):
    prediction = predictions["utm"]
    write_labeled_ply(prediction, tmp_path / "utm.labeled.ply")
    vertex = plyfile.PlyData.read(str(tmp_path / "utm.labeled.ply"))["vertex"]
    written = np.stack([vertex[a] for a in "xyz"], axis=1)
    assert written.dtype == np.float64  # float would round a northing of 4.5e6 m to 0.5 m
    np.testing.assert_array_equal(written, prediction.cloud["origin"] + prediction.cloud["coord"].astype(np.float64))
    original = np.stack([plyfile.PlyData.read(str(files["utm"]))["vertex"][a] for a in "xyz"], axis=1)
    # What remains is float32's rounding of coordinates less than 128 m from the origin: half its
    # spacing there, 3.8 um (measured: 1.9 um).
    assert np.abs(written - original).max() <= np.spacing(np.float32(ORIGIN_STEP)) / 2


def test_a_cloud_near_zero_is_written_with_float_coordinates(tmp_path):
    # ScanNet's vh_clean_2 layout, and what every viewer expects of a small scene.
    cloud = {"coord": np.array([[0.5, 1.25, 2.0], [3.0, -1.0, 0.125]], np.float32), "origin": np.zeros(3)}
    write_ply(tmp_path / "small.ply", cloud)
    vertex = plyfile.PlyData.read(str(tmp_path / "small.ply"))["vertex"]
    assert vertex["x"].dtype == np.float32
    np.testing.assert_array_equal(read_ply(tmp_path / "small.ply")["coord"], cloud["coord"])


def test_the_preprocessed_layout_keeps_a_non_zero_origin(files, tmp_path):
    cloud = read_ply(files["utm"])
    write_preprocessed(tmp_path / "scan", cloud)
    out = read_preprocessed(tmp_path / "scan")
    np.testing.assert_array_equal(out["origin"], cloud["origin"])
    np.testing.assert_array_equal(out["coord"], cloud["coord"])


def test_the_preprocessed_layout_of_a_cloud_near_zero_is_pointcepts(files, tmp_path):
    write_preprocessed(tmp_path / "scan", read_ply(files["local"]))
    assert sorted(p.name for p in (tmp_path / "scan").iterdir()) == ["color.npy", "coord.npy", "normal.npy"]
    np.testing.assert_array_equal(read_preprocessed(tmp_path / "scan")["origin"], np.zeros(3))


def test_normals_do_not_depend_on_where_the_origin_was_put(points_dir):
    # The fragment is in its sensor's frame: the sensor sits at the file's zero, which is `origin`
    # away from the zero of `coord` once the coordinates are held relative to an origin.
    scan = read_ply(points_dir / "livingroom_fragment.ply")
    coord = scan["coord"][::6]
    shift = np.array([128.0, -64.0, 192.0])
    as_read = estimate_normals({"coord": coord})
    moved = estimate_normals({"coord": (coord.astype(np.float64) - shift).astype(np.float32), "origin": shift})
    # Every normal faces the same side (taking the shifted coordinates as the frame flips 12,461
    # of these 18,783). The planes fitted are the same up to float32's rounding of the moved
    # coordinates, which can swap a neighbour at the 10 cm search radius (measured: 1.4% of the
    # normals move by more than 1e-4, the most by 14.5 degrees).
    assert ((moved * as_read).sum(1) > 0).all()
    assert ((moved * as_read).sum(1) > np.cos(np.radians(20))).all()
