"""Point clouds that would read as wrong answers are refused where they are read, in one line:
a stray point far from the scan (float32 would round every real point), a cloud wider than
float32 holds to 1 mm, extents no neighbour search survives, and a binary body that does not
match its header."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plyfile
import pytest

from spatiotemporal.io.errors import PointCloudError
from spatiotemporal.io.points import read_points, write_ply

# A scan 5,000 km from the file's zero, as projected coordinates put it (easting, northing, height).
FAR = np.array([3_000_000.0, 4_000_000.0, 0.0])


def room(n: int = 3_000, seed: int = 0) -> np.ndarray:
    """(n, 3) float64 positions in a 20 m room, at the sub-millimetre digits a lidar writes."""
    return np.random.default_rng(seed).uniform(0.0, 20.0, (n, 3))


def write_double_ply(path: Path, coord: np.ndarray) -> Path:
    vertex = np.empty(len(coord), dtype=[(a, "f8") for a in "xyz"])
    vertex["x"], vertex["y"], vertex["z"] = coord.T
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(path))
    return path


def test_a_stray_zero_point_in_a_georeferenced_scan_is_refused_naming_it(tmp_path):
    # A lidar export's invalid return, written as 0,0,0. Held around the bounding box's centre,
    # 2,500 km from every real point, float32 would put those on 0.25 m steps.
    coord = room() + FAR
    coord[1234] = 0.0
    with pytest.raises(PointCloudError, match=r"scan.ply: point 1234 at \(0, 0, 0\) lies 4,000,010 m from the median point"):
        read_points(write_double_ply(tmp_path / "scan.ply", coord))


def test_a_stray_point_at_1e9_m_in_an_indoor_scan_is_refused_naming_it(tmp_path):
    coord = room()
    coord[17] = (1e9, 5.0, 1.0)
    with pytest.raises(PointCloudError, match=r"scan.ply: point 17 at \(1000000000, 5, 1\) lies 999,999,990 m"):
        read_points(write_double_ply(tmp_path / "scan.ply", coord))


def test_a_georeferenced_scan_60_km_wide_comes_back_within_1_mm(tmp_path):
    # The widest clouds float32 holds to 1 mm around one origin span 2 * 32,768 m.
    coord = room() * [3_000.0, 1.0, 1.0] + FAR  # 60 km along x
    cloud = read_points(write_double_ply(tmp_path / "transect.ply", coord))
    back = cloud["origin"] + cloud["coord"].astype(np.float64)
    assert np.abs(back - coord).max() <= 1e-3  # measured: 0.98 mm at most, 0.11 mm on average


def test_a_scan_wider_than_float32_holds_to_1_mm_is_refused(tmp_path):
    coord = room() * [3_500.0, 1.0, 1.0] + FAR  # 70 km along x: some points would move by 2 mm
    with pytest.raises(PointCloudError, match=r"point \d+ at .* keep 1 mm only within 32,768 m of one origin"):
        read_points(write_double_ply(tmp_path / "transect.ply", coord))


def test_coordinates_spanning_1e19_m_are_refused_where_the_cloud_is_read(tmp_path):
    # Open3D's neighbour search fails on such extents with an internal error; the reader says why.
    coord = np.random.default_rng(1).uniform(-1e19, 1e19, (200, 3))
    with pytest.raises(PointCloudError, match=r"lies 1\.\d+e\+19 m from the median point"):
        read_points(write_double_ply(tmp_path / "huge.ply", coord))


def float_header(n: int) -> bytes:
    return (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\nend_header\n"
    ).encode()


def test_a_binary_ply_longer_than_its_header_describes_is_refused(tmp_path):
    # The header declares float coordinates; the writer wrote doubles. Read as floats they are
    # garbage near 1e38, which later failed as "NaN or inf" or inside Open3D.
    path = tmp_path / "double_as_float.ply"
    path.write_bytes(float_header(1_000) + room(1_000).astype("<f8").tobytes())
    with pytest.raises(PointCloudError) as info:
        read_points(path)
    assert info.value.reason == (
        "binary PLY body is 12,000 bytes longer than its header describes (vertex: 1,000 rows of 12 bytes):"
        " it was written with other property types or counts than the header declares"
        " (e.g. double written, float declared)"
    )


def scannet_like_mesh(path: Path, n: int = 300) -> Path:
    """A mesh with ScanNet's 11 vertex properties (coordinates, normals, rgba, a ushort label) and faces."""
    rng = np.random.default_rng(0)
    names = ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue", "alpha", "label"]
    vertex = np.empty(n, dtype=[(a, "f4") for a in names[:6]] + [(a, "u1") for a in names[6:10]] + [("label", "u2")])
    for name in names:
        vertex[name] = rng.uniform(0, 5, n)
    face = np.empty(10, dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = rng.integers(0, n, (10, 3))
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"), plyfile.PlyElement.describe(face, "face")]).write(str(path))
    return path


def test_a_mismatched_mesh_body_is_summarised_in_counts_and_bytes_not_cut(tmp_path):
    # Eleven property types and a face list do not fit in one line; rows and bytes do.
    path = scannet_like_mesh(tmp_path / "scene_vh_clean_2.ply")
    path.write_bytes(path.read_bytes() + np.random.default_rng(1).bytes(500))
    with pytest.raises(PointCloudError) as info:
        read_points(path)
    assert info.value.reason == (
        "binary PLY body is 500 bytes longer than its header describes (vertex: 300 rows of 30 bytes,"
        " face: 10 rows of at least 1 byte): it was written with other property types or counts than"
        " the header declares (e.g. double written, float declared)"
    )


@pytest.mark.parametrize(
    "padding", [b"\0", b"\0" * 3, b"\n" * 3, b" " * 3, b"\r\n", b"\0" * 4096],
    ids=["1 NUL", "3 NUL", "3 LF", "3 spaces", "CRLF", "a 4 KiB block of NUL"],
)
def test_padding_after_a_binary_body_is_not_a_mismatch(tmp_path, padding):
    # Writers pad to a block or end with line breaks: NUL and whitespace hold no point.
    coord = room(1_000).astype("<f4")
    path = tmp_path / "padded.ply"
    path.write_bytes(float_header(1_000) + coord.tobytes() + padding)
    np.testing.assert_array_equal(read_points(path)["coord"], coord)


def test_nul_padding_after_a_meshs_faces_is_not_a_mismatch(tmp_path):
    path = scannet_like_mesh(tmp_path / "mesh.ply")
    whole = read_points(path)
    path.write_bytes(path.read_bytes() + b"\0" * 4)
    np.testing.assert_array_equal(read_points(path)["faces"], whole["faces"])


def test_fewer_bytes_than_a_vertex_row_after_the_body_are_not_a_mismatch(tmp_path):
    # 11 stray bytes cannot hold a 12-byte point the header left out.
    coord = room(1_000).astype("<f4")
    path = tmp_path / "short_tail.ply"
    path.write_bytes(float_header(1_000) + coord.tobytes() + b"\x01" * 11)
    np.testing.assert_array_equal(read_points(path)["coord"], coord)


def test_one_vertex_row_of_data_after_the_body_is_a_mismatch(tmp_path):
    # The header counts 1,000 points and the writer wrote 1,001.
    coord = room(1_001).astype("<f4")
    path = tmp_path / "one_more.ply"
    path.write_bytes(float_header(1_000) + coord.tobytes())
    with pytest.raises(PointCloudError) as info:
        read_points(path)
    assert info.value.reason.startswith("binary PLY body is 12 bytes longer than its header describes")


def test_a_final_line_break_after_a_binary_body_is_not_a_mismatch(tmp_path):
    coord = room(1_000).astype("<f4")
    path = tmp_path / "newline.ply"
    path.write_bytes(float_header(1_000) + coord.tobytes() + b"\n")
    np.testing.assert_array_equal(read_points(path)["coord"], coord)


def test_a_mesh_with_faces_after_its_vertices_is_read_whole(tmp_path):
    # The body check counts list elements (faces) as plyfile read them, not from the header alone.
    cloud = {"coord": room(4).astype(np.float32)}
    vertex = np.empty(4, dtype=[(a, "f4") for a in "xyz"])
    vertex["x"], vertex["y"], vertex["z"] = cloud["coord"].T
    face = np.array([([0, 1, 2],), ([0, 2, 3],)], dtype=[("vertex_indices", "i4", (3,))])
    elements = [plyfile.PlyElement.describe(vertex, "vertex"), plyfile.PlyElement.describe(face, "face")]
    plyfile.PlyData(elements).write(str(tmp_path / "mesh.ply"))
    out = read_points(tmp_path / "mesh.ply")
    np.testing.assert_array_equal(out["faces"], [[0, 1, 2], [0, 2, 3]])
    write_ply(tmp_path / "again.ply", out)  # and a cloud this library writes reads back
    np.testing.assert_array_equal(read_points(tmp_path / "again.ply")["coord"], cloud["coord"])
