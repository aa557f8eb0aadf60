"""PLY colours come back in 0..255 whatever type the file declares for red/green/blue, and a range
that cannot be colour is an error naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plyfile
import pytest

from spatiotemporal.io.errors import PointCloudError
from spatiotemporal.io.points import read_ply, read_points


def write_coloured_ply(path: Path, colour_type: str, rgb: list[list[float]]) -> Path:
    """A PLY whose vertices sit on the x axis and carry `rgb` as `colour_type` red/green/blue."""
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")] + [(c, colour_type) for c in ("red", "green", "blue")]
    vertex = np.zeros(len(rgb), dtype=fields)
    vertex["x"] = np.arange(len(rgb))
    values = np.asarray(rgb)
    vertex["red"], vertex["green"], vertex["blue"] = values[:, 0], values[:, 1], values[:, 2]
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(path))
    return path


def test_uchar_colours_are_kept_as_they_are(tmp_path):
    path = write_coloured_ply(tmp_path / "u1.ply", "u1", [[0, 128, 255], [7, 64, 200]])
    assert read_ply(path)["color"].tolist() == [[0.0, 128.0, 255.0], [7.0, 64.0, 200.0]]


def test_ushort_colours_are_scaled_so_65535_is_255(tmp_path):
    path = write_coloured_ply(tmp_path / "u2.ply", "u2", [[0, 257 * 128, 65535], [257, 257 * 64, 257 * 200]])
    assert read_ply(path)["color"].tolist() == [[0.0, 128.0, 255.0], [1.0, 64.0, 200.0]]


def test_float_colours_within_0_1_are_scaled_to_0_255(tmp_path):
    path = write_coloured_ply(tmp_path / "f01.ply", "f4", [[0.0, 0.5, 1.0], [0.25, 0.75, 0.125]])
    assert read_ply(path)["color"].tolist() == [[0.0, 127.5, 255.0], [63.75, 191.25, 31.875]]


def test_float_colours_already_in_0_255_are_kept(tmp_path):
    path = write_coloured_ply(tmp_path / "f255.ply", "f4", [[0.0, 0.5, 255.0], [12.5, 100.0, 1.0]])
    assert read_ply(path)["color"].tolist() == [[0.0, 0.5, 255.0], [12.5, 100.0, 1.0]]


def test_float_colours_beyond_255_are_an_error_naming_the_file(tmp_path):
    path = write_coloured_ply(tmp_path / "f_bad.ply", "f4", [[0.0, 10.0, 300.0], [1.0, 2.0, 3.0]])
    with pytest.raises(PointCloudError) as info:
        read_points(path)
    assert info.value.path == str(path)
    assert info.value.reason == "float32 colour values span 0..300, outside 0..255 (or 0..1 for float)"


def test_negative_float_colours_are_an_error(tmp_path):
    path = write_coloured_ply(tmp_path / "f_neg.ply", "f4", [[-0.5, 0.5, 1.0]])
    with pytest.raises(PointCloudError, match=r"float32 colour values span -0\.5\.\.1, outside 0\.\.255"):
        read_ply(path)


def test_nan_colours_are_an_error(tmp_path):
    path = write_coloured_ply(tmp_path / "f_nan.ply", "f4", [[np.nan, 0.5, 1.0]])
    with pytest.raises(PointCloudError, match="colour values include NaN or inf"):
        read_ply(path)


def test_ascii_ushort_colours_are_scaled_like_binary_ones(tmp_path):
    binary = write_coloured_ply(tmp_path / "bin.ply", "u2", [[65535, 0, 257 * 3]])
    text = tmp_path / "ascii.ply"
    plyfile.PlyData(plyfile.PlyData.read(str(binary)).elements, text=True).write(str(text))
    assert read_ply(text)["color"].tolist() == [[255.0, 0.0, 3.0]]
