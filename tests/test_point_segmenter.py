"""`PointSegmenter`: class names and label ids follow the model that was built (its checkpoint,
else its head), and scans are voxelized at the grid the model was trained at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spatiotemporal.data.scannet import CLASS_NAMES, NYU40_IDS
from spatiotemporal.infer import DEFAULT_VOXEL_SIZE, PointSegmenter, write_labeled_ply
from spatiotemporal.io.errors import CheckpointError
from spatiotemporal.io.points import read_ply
from spatiotemporal.models import create_model


@pytest.fixture(scope="module")
def scan(points_dir) -> dict:
    """Every 60th point of the real living-room scan."""
    cloud = read_ply(points_dir / "livingroom_fragment.ply")
    return {"coord": cloud["coord"][::60], "color": cloud["color"][::60]}


def save_checkpoint(path: Path, num_classes: int, winner: int, **meta) -> Path:
    """A point_transformer_tiny whose head answers `winner` for every point."""
    torch.manual_seed(0)
    model = create_model("point_transformer_tiny", num_classes=num_classes)
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.zero_()
        model.classifier[-1].bias[winner] = 10.0
    torch.save({"model": model.state_dict(), "num_classes": num_classes, **meta}, path)
    return path


def test_a_head_of_another_size_gets_generic_names_and_class_index_labels(tmp_path, scan):
    checkpoint = save_checkpoint(tmp_path / "ck.pt", num_classes=25, winner=22)
    segmenter = PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu", max_fragments=1)
    assert segmenter.class_names == tuple(f"class_{i}" for i in range(25))
    prediction = segmenter.predict("room.ply", scan)
    assert prediction.counts() == {"class_22": len(scan["coord"])}
    assert prediction.label_kind == "class_index"
    write_labeled_ply(prediction, tmp_path / "room.labeled.ply")
    labels = read_ply(tmp_path / "room.labeled.ply")["label"]
    assert set(np.unique(labels)) == {22}


def test_nyu40_ids_are_refused_for_a_label_set_that_is_not_scannets(tmp_path, scan):
    checkpoint = save_checkpoint(tmp_path / "ck.pt", num_classes=25, winner=22)
    prediction = PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu", max_fragments=1).predict(
        "room.ply", scan
    )
    with pytest.raises(ValueError, match="room.ply: nyu40 ids exist only for the ScanNet 20-class label set; "
                                         r"this model predicts 25 classes \(class_0, class_1, class_2, class_3, ...\)"):
        prediction.nyu40


def test_the_checkpoints_class_names_name_the_classes(tmp_path, scan):
    names = ["floor", "wall", "chair", "other"]
    checkpoint = save_checkpoint(tmp_path / "ck.pt", num_classes=4, winner=2, class_names=names)
    prediction = PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu", max_fragments=1).predict(
        "room.ply", scan
    )
    assert prediction.class_names == tuple(names)
    assert prediction.counts() == {"chair": len(scan["coord"])}
    assert prediction.label_kind == "class_index"


def test_a_twenty_class_checkpoint_with_scannets_names_writes_nyu40_ids(tmp_path, scan):
    checkpoint = save_checkpoint(tmp_path / "ck.pt", num_classes=20, winner=4, class_names=list(CLASS_NAMES))
    prediction = PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu", max_fragments=1).predict(
        "room.ply", scan
    )
    assert prediction.label_kind == "nyu40"
    assert set(prediction.nyu40.tolist()) == {NYU40_IDS[4]} == {5}  # chair


def test_class_names_that_do_not_fit_the_head_are_a_checkpoint_error(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ck.pt", num_classes=4, winner=0, class_names=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="ck.pt: 3 class names for a model with 4 classes"):
        PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu")


def test_the_s3dis_head_is_not_given_scannet_names():
    segmenter = PointSegmenter("stratified_transformer_s3dis", device="cpu", random_weights=True)
    assert segmenter.class_names == tuple(f"class_{i}" for i in range(13))


def test_voxel_size_defaults_to_the_model_configs_grid(capsys):
    assert PointSegmenter("stratified_transformer_tiny", device="cpu", random_weights=True).voxel_size == 0.04
    assert capsys.readouterr().err == ""


def test_voxel_size_defaults_to_the_grid_the_checkpoint_records(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ck.pt", num_classes=20, winner=0, grid_size=0.05)
    assert PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu").voxel_size == 0.05


def test_voxel_size_falls_back_to_pointcepts_scannet_grid_when_nothing_records_one():
    assert PointSegmenter("point_transformer_tiny", device="cpu", random_weights=True).voxel_size == DEFAULT_VOXEL_SIZE == 0.02


def test_a_voxel_size_other_than_the_trained_one_is_used_with_a_one_line_warning(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "ck.pt", num_classes=20, winner=0, grid_size=0.05)
    segmenter = PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu", voxel_size=0.02)
    assert segmenter.voxel_size == 0.02
    assert capsys.readouterr().err == (
        "warning: voxel size 0.02 m differs from the 0.05 m that the checkpoint records for "
        "point_transformer_tiny; predictions may degrade\n"
    )
    PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu", voxel_size=0.05)
    assert capsys.readouterr().err == ""


def test_a_voxel_size_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="--voxel-size must be a positive number of metres, got 0.0"):
        PointSegmenter("point_transformer_tiny", device="cpu", voxel_size=0.0, random_weights=True)


def test_the_segmenter_reads_its_checkpoint_once(tmp_path, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / "ck.pt", num_classes=20, winner=0, grid_size=0.05)
    reads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    segmenter = PointSegmenter("point_transformer_tiny", str(checkpoint), device="cpu")
    assert reads == [str(checkpoint)] and segmenter.voxel_size == 0.05
