"""`spatiotemporal infer --out`: one labeled PLY and PNG per input even when inputs share a file
name; a bad --out or --topk is one error line and exit 2, before any model is built."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spatiotemporal.infer import check_topk, output_stems


def infer(capsys, *argv: str):
    """Run `spatiotemporal infer ...` in this process; returns (exit code, stdout, stderr)."""
    from spatiotemporal.cli import main

    code = main(["infer", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_output_names_are_plain_file_names_unless_two_inputs_share_one():
    paths = ["scans/a/room.ply", "scans/b/room.ply", "desk.ply", "/data/x/sofa.npy"]
    assert output_stems(paths) == ["a__room", "b__room", "desk", "sofa"]


def test_one_file_given_twice_gets_a_numbered_second_name():
    assert output_stems(["scans/room.ply", "scans/room.ply"]) == ["room", "room-2"]


@pytest.fixture(scope="module")
def same_named_scans(tmp_path_factory, points_dir: Path) -> tuple[Path, Path]:
    """Two different subsamples of the real living-room scan, both called room.ply."""
    from spatiotemporal.io.points import read_ply, write_ply

    scan = read_ply(points_dir / "livingroom_fragment.ply")
    root = tmp_path_factory.mktemp("scans")
    paths = []
    for folder, step in (("a", 80), ("b", 120)):
        (root / folder).mkdir()
        write_ply(root / folder / "room.ply", {"coord": scan["coord"][::step], "color": scan["color"][::step]})
        paths.append(root / folder / "room.ply")
    return paths[0], paths[1]


def test_scans_sharing_a_file_name_each_get_a_labeled_ply_and_png(tmp_path, same_named_scans, capsys):
    from spatiotemporal.io.points import read_ply

    out = tmp_path / "out"
    code, stdout, _ = infer(capsys, *map(str, same_named_scans), "--model", "point_transformer_tiny",
                            "--random-weights", "--device", "cpu", "--out", str(out), "--json")
    assert code == 0
    records = json.loads(stdout)["results"]
    assert [(r["labeled_ply"], r["png"]) for r in records] == [
        (str(out / "a__room.labeled.ply"), str(out / "a__room.png")),
        (str(out / "b__room.labeled.ply"), str(out / "b__room.png")),
    ]
    for record, scan in zip(records, same_named_scans):
        np.testing.assert_allclose(read_ply(record["labeled_ply"])["coord"], read_ply(scan)["coord"])


def test_out_naming_an_existing_file_is_a_one_line_error(tmp_path, same_named_scans, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    code, stdout, stderr = infer(capsys, str(same_named_scans[0]), "--model", "point_transformer_tiny",
                                 "--random-weights", "--out", str(afile))
    assert (code, stdout, stderr) == (2, "", f"error: --out {afile} is not a directory\n")
    assert afile.read_text() == "keep me\n"


@pytest.mark.parametrize("topk", ["0", "-1"])
def test_topk_below_one_is_a_one_line_error(video_dir, capsys, topk):
    code, stdout, stderr = infer(capsys, str(video_dir / "rotated_90.mov"), "--model", "vivit_tiny",
                                 "--random-weights", "--views", "1x1", "--topk", topk)
    assert (code, stdout, stderr) == (2, "", f"error: --topk must be an integer >= 1, got {topk}\n")


@pytest.mark.parametrize("topk", [0, -3, True, 2.0])
def test_check_topk_refuses_anything_but_a_positive_integer(topk):
    with pytest.raises(ValueError, match=r"^--topk must be an integer >= 1, got "):
        check_topk(topk)


def test_check_topk_returns_a_valid_value():
    assert check_topk(1) == 1
